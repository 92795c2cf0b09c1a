"""gunicorn configuration: ``gunicorn -c examples/gunicorn_conf.py examples.flask_app:app``.

With ``preload_app`` the app (and its logging configuration) is imported once
in the master, then the workers are forked. HamustroHandler registers an
``os.register_at_fork`` hook: each worker gets its own SQLite connection,
HTTP session and threads, so no extra ``post_fork`` code is needed. All
workers share one queue folder: ``nr`` stays unique per session and no batch
is sent by two workers at once (leases).
"""

from __future__ import annotations

bind = "127.0.0.1:8000"
workers = 4
preload_app = True
# gunicorn's own logging stays as it is; the app configures HamustroHandler
# (see examples/flask_app.py), and only records with an `event` attribute
# become events.
