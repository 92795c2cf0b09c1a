"""The README's quickstart works as written (it starts its own collector)."""

from __future__ import annotations

import importlib.util
import logging
import logging.config
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from hamustro_logging import HamustroHandler
from hamustro_logging.collector import DevCollector

from .support import TEST_SECRET

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_delivers_three_events(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the collector accepted 3 events" in done.stdout
    assert "nr=2 order_placed" in done.stdout
    assert "log line: INFO shop: an ordinary log line" in done.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_schema2_example_delivers_three_events_in_schema_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "schema2.py")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "the collector accepted 3 events" in done.stdout
    assert "nr=1 signup        env=DEVELOPMENT tenant_id=acme user_id=u-7" in done.stdout
    assert 'params={"items":"[\\"tea\\"]","total":"12"}' in done.stdout
    assert "nr=3 checkout      env=DEVELOPMENT tenant_id=acme user_id=u-7" in done.stdout
    assert 'params={"paid":"true"}' in done.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_django_logging_setting_sends_with_configuration_from_the_environment(
    tmp_path: Path, collector: DevCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location(
        "django_settings", ROOT / "examples" / "django_settings.py"
    )
    assert spec is not None and spec.loader is not None
    settings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(settings)
    monkeypatch.setenv("HAMUSTRO_COLLECTOR_URL", collector.url)
    monkeypatch.setenv("HAMUSTRO_SHARED_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("HAMUSTRO_QUEUE_DIR", str(tmp_path / "q"))
    logging.config.dictConfig(settings.LOGGING)
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, HamustroHandler))
    try:
        logging.getLogger("shop.views").info(
            "order placed", extra={"event": "order_placed", "user_id": 5}
        )
        assert handler.flush(timeout=10)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    (event,) = collector.wait_for(1)
    assert (event["event"], event["user_id"], event["client_id"]) == ("order_placed", 5, "shop-web")
    assert event["product_version"] == "2.4.0" and event["system"] == platform.system()
