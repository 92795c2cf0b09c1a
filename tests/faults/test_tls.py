"""TLS verification is on by default: a self-signed collector is refused until its CA is given.

The development collector speaks plain HTTP; the test wraps its listening
socket for TLS with a certificate made by the ``openssl`` command in
``tmp_path`` (skipped without it).
"""

from __future__ import annotations

import io
import logging
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hamustro_logging import HamustroHandler
from hamustro_logging.collector import DevCollector

from ..support import TEST_SECRET, tracker_config


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate (and its key) for 127.0.0.1, valid one day."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_collector(tmp_path: Path) -> Iterator[tuple[DevCollector, str, Path]]:
    """A started dev collector serving HTTPS; yields it, its https URL and the CA file."""
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with DevCollector(secret=TEST_SECRET, output=io.StringIO()) as collector:
        # Reaches into the dev collector on purpose: the collector has no TLS
        # option. Right after start() nothing has connected yet; the server
        # thread selects on the same file descriptor and accepts (and does the
        # handshake) through the wrapped socket from now on.
        server = collector._server
        assert server is not None
        server.socket = context.wrap_socket(server.socket, server_side=True)
        yield collector, collector.url.replace("http://", "https://", 1), cert


def test_tls_is_verified_by_default_and_a_ca_bundle_makes_it_work(
    tls_collector: tuple[DevCollector, str, Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    collector, url, cert = tls_collector
    log = logging.getLogger("tls.app")
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        check_tls(log, collector, url, cert, tmp_path, capfd)
    finally:
        log.setLevel(logging.NOTSET)
        log.propagate = True


def check_tls(
    log: logging.Logger,
    collector: DevCollector,
    url: str,
    cert: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    default = HamustroHandler(**tracker_config(url, tmp_path / "q", close_timeout=2.0))
    log.addHandler(default)
    try:
        for i in range(3):
            log.info("e", extra={"event": "tls.e", "user_id": i})
        assert default.flush(timeout=5) is False  # the self-signed certificate is refused
        stats = default.stats()
    finally:
        log.removeHandler(default)
        default.close()
    assert collector.events() == []
    assert stats["pending"] == 3
    assert "TLS" in stats["last_error"]
    err = capfd.readouterr().err
    assert any("TLS" in line for line in err.splitlines() if line.startswith("hamustro-logging:"))
    assert TEST_SECRET not in err

    trusting = HamustroHandler(
        **tracker_config(url, tmp_path / "q", close_timeout=2.0, verify=str(cert))
    )
    log.addHandler(trusting)
    try:
        log.info("e", extra={"event": "tls.e", "user_id": 3})
        assert trusting.flush(timeout=10) is True  # the three kept from before, and this one
    finally:
        log.removeHandler(trusting)
        trusting.close()
    assert sorted(e["user_id"] for e in collector.events()) == [0, 1, 2, 3]
    assert TEST_SECRET not in capfd.readouterr().err
