"""Schema 2: the same as quickstart.py, against a collector of upstream's newest schema.

    python examples/schema2.py

1. starts ``python -m hamustro_logging.collector --schema 2`` on a free
   loopback port (it refuses schema 1 with 400, as the real one does);
2. configures the root logger with ``logging.config.dictConfig`` and a
   ``hamustro_logging.HamustroHandler`` with ``schema: 2``, its ``env`` and a
   default ``tenant_id`` (queue in a temporary folder);
3. signs a user in with ``handler.tracker.set_user`` (kept in the queue
   folder: the next start still has it) and logs three events, ``params``
   as a mapping, and one ordinary line (which the handler ignores);
4. ``logging.shutdown()`` delivers what is queued; the collector prints each
   event it accepted as a JSON line (parameters as one JSON object, env by
   name), and this script shows them.
"""

from __future__ import annotations

import json
import logging
import logging.config
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hamustro_logging import HamustroHandler

SECRET = "schema2-secret"  # noqa: S105 - the local collector's demo secret


def start_collector(output: Path) -> tuple[subprocess.Popen[str], str]:
    """Run the development collector; return it and its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hamustro_logging.collector", "--port", "0",
         "--secret", SECRET, "--output", str(output), "--schema", "2"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    line = process.stderr.readline()  # "hamustro dev collector listening on http://..."
    if "listening on" not in line:
        process.kill()
        raise SystemExit(f"the collector did not start: {line.strip()}")
    url = line.split("listening on ", 1)[1].strip().removesuffix("/api/v1/track")
    return process, url


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="hamustro-schema2-"))
    received = workdir / "received.jsonl"
    collector, url = start_collector(received)
    print(f"local collector: {url}/api/v1/track")
    try:
        logging.config.dictConfig({
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "log line: %(levelname)s %(name)s: %(message)s"}},
            "handlers": {
                "console": {"class": "logging.StreamHandler", "formatter": "plain",
                            "stream": "ext://sys.stdout"},
                "hamustro": {
                    "class": "hamustro_logging.HamustroHandler",
                    "collector_url": url,
                    "shared_secret_key": SECRET,
                    "device_id": "schema2-host",
                    "client_id": "schema2-example",
                    "system_version": "1",
                    "product_version": "0.1.0",
                    "schema": 2,
                    "env": "development",  # an Environment name in any case, or 0-11
                    "tenant_id": "acme",  # for events without a tenant of their own
                    "queue_dir": str(workdir / "queue"),
                },
            },
            "root": {"level": "INFO", "handlers": ["console", "hamustro"]},
        })  # fmt: skip
        handler = next(h for h in logging.getLogger().handlers if isinstance(h, HamustroHandler))
        log = logging.getLogger("shop")
        log.info("user signed up", extra={"event": "signup", "user_id": "u-7"})
        handler.tracker.set_user("acme", "u-7")  # signed in: later events take this user
        log.info("order placed", extra={"event": "order_placed", "country": "HU",
                                        "params": {"total": 12, "items": ["tea"]}})  # fmt: skip
        log.info("an ordinary log line: not an event, the handler ignores it")
        log.info("checkout", extra={"event": "checkout", "params": {"coupon": None, "paid": True}})
        logging.shutdown()  # flushes and closes the handler: delivers what is queued

        deadline = time.monotonic() + 10
        lines: list[str] = []
        while time.monotonic() < deadline and len(lines) < 3:
            lines = received.read_text().splitlines() if received.exists() else []
            time.sleep(0.05)
        print(f"\nthe collector accepted {len(lines)} events:")
        for line in lines:
            event = json.loads(line)
            print(f"  nr={event['nr']} {event['event']:<13} env={event['env']} "
                  f"tenant_id={event['tenant_id']} user_id={event['user_id']} "
                  f"timezone={event['timezone']} params={event['parameters']} "
                  f"session={event['session'][:8]}...")  # fmt: skip
        return 0 if len(lines) == 3 else 1
    finally:
        collector.terminate()
        collector.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
