"""``python -m hamustro_logging``: the ``hamustro-logging`` command (see :mod:`.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
