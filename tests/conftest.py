"""Shared fixtures: a clean root logger for every test, a running dev collector."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator

# Hypothesis writes a few files of its own (not only its example database)
# into the working directory unless told where: a temporary folder instead.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="hamustro-hypothesis-")
)

import pytest  # (after the variable above, which hypothesis reads when it first writes)
from hypothesis import settings

from hamustro_logging.collector import DevCollector

TEST_SECRET = "test-secret"  # noqa: S105 -- a test fixture, not a credential


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """Undo whatever a test did to the root logger (as structlog's conftest does)."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    raise_exceptions = logging.raiseExceptions
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.raiseExceptions = raise_exceptions


@pytest.fixture
def secret() -> str:
    """The shared secret the ``collector`` fixture checks signatures with."""
    return TEST_SECRET


@pytest.fixture
def collector() -> Iterator[DevCollector]:
    """A started development collector on loopback; events also go to a StringIO."""
    with DevCollector(secret=TEST_SECRET, output=io.StringIO()) as running:
        yield running


# Hypothesis keeps no example database in the working directory.
settings.register_profile("hamustro", database=None, deadline=None)
settings.load_profile("hamustro")
