"""Say the library's own problems on stderr, once per streak, never through ``logging``.

The library's threads must not log through ``logging``: ``logging.shutdown()``
and ``dictConfig`` hold the module lock while they wait on handlers, and a
flusher that logs then deadlocks (a known bug in other SDKs). So problems go
straight to ``sys.stderr``, as python-logstash-async's ``safe_log_via_print``
does: one line when a streak of failures starts (or its cause changes), a
reminder at most every ``remind_after`` seconds while it lasts, and one line
when it ends.

Lines are said as they are given: no message of the library ever holds the
shared secret or a ``headers`` value (the code that makes them never puts
one in, and a URL is shown without its ``user:password@``), so nothing is
blanked out after the fact; a blanked-out secret that is an ordinary word
would blank out the message's own words.

Called from any thread. Lines are written after the reporter's lock is
released: stderr may be routed into ``logging``, whose handlers take locks of
their own.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

__all__ = ["Reporter"]

PREFIX = "hamustro-logging: "


class Reporter:
    """Rate-limited stderr lines for one tracker or handler.

    >>> import io
    >>> out = io.StringIO()
    >>> r = Reporter(stream=out)
    >>> r.problem("send", "405: check the key"); r.problem("send", "405: check the key")
    >>> r.recovered("send", "delivered again")
    >>> print(out.getvalue(), end="")
    hamustro-logging: 405: check the key
    hamustro-logging: delivered again (after 2 failures)
    """

    def __init__(self, stream: TextIO | None = None, remind_after: float = 600.0) -> None:
        self._stream = stream
        self.remind_after = remind_after
        self._lock = threading.Lock()
        self._streaks: dict[str, tuple[str, float, int]] = {}  # kind -> (message, last said, count)
        self.burst, self.window = 20, 10.0
        self._window_start, self._said, self._held_back = -self.window, 0, 0

    def reset_lock(self) -> None:
        """In a forked child: a lock a parent thread held at the fork stays held."""
        self._lock = threading.Lock()

    def _say(self, line: str) -> None:
        stream = self._stream or sys.stderr
        try:
            stream.write(PREFIX + line.replace("\n", " ") + "\n")
            stream.flush()
        except Exception:  # noqa: S110 - a closed stderr must not break the app
            pass

    def problem(self, kind: str, message: str, detail: str = "") -> None:
        """A failure of ``kind``: said if new, changed, or not said for a while.

        ``message`` is the cause, compared to decide whether the streak goes
        on; ``detail`` (counts, delays) is printed with it but not compared.
        """
        now = time.monotonic()
        line = None
        with self._lock:
            old = self._streaks.get(kind)
            count = old[2] + 1 if old else 1
            if old is None or old[0] != message or now - old[1] >= self.remind_after:
                self._streaks[kind] = (message, now, count)
                line = message + detail
                line = line if count == 1 else f"{line} ({count} failures so far)"
            else:
                self._streaks[kind] = (old[0], old[1], count)
        if line is not None:
            self._say(line)

    def recovered(self, kind: str, message: str) -> None:
        """The streak of ``kind`` is over; said only if there was one."""
        with self._lock:
            old = self._streaks.pop(kind, None)
        if old is not None:
            self._say(f"{message} (after {old[2]} failures)")

    def once(self, message: str) -> None:
        """A single line, e.g. a bad record.

        At most ``burst`` such lines per ``window`` seconds: a loop that logs
        a bad record a million times must not flood stderr. What is held
        back is counted and said with the next line let through.
        """
        now = time.monotonic()
        with self._lock:
            if now - self._window_start >= self.window:
                self._window_start, self._said = now, 0
            if self._said >= self.burst:
                self._held_back += 1
                return
            self._said += 1
            if self._held_back:
                message += f" ({self._held_back} similar lines held back before this one)"
                self._held_back = 0
        self._say(message)
