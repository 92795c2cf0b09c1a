"""``python -m hamustro_logging.collector``: run the development collector (see :mod:`.command`)."""

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
