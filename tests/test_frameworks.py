"""The framework integrations on the real frameworks: FastAPI/Starlette, Django, Flask.

Each test runs the example of ``examples/`` (or the adapter of
``hamustro_logging.integrations``) in the framework's own test client, and
checks the events at the development collector on loopback. Celery, which
needs a worker of its own, is in ``tests/test_celery.py``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hamustro_logging import HamustroHandler, current_context
from hamustro_logging.collector import DevCollector

from .support import TEST_SECRET, tracker_config

ROOT = Path(__file__).resolve().parent.parent


def load_example(name: str) -> ModuleType:
    """Import ``examples/NAME.py`` as the module ``NAME`` (as the framework's CLI would)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture
def from_environment(
    collector: DevCollector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The collector and a queue folder for handlers configured from the environment."""
    for name in list(os.environ):
        if name.startswith("HAMUSTRO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HAMUSTRO_COLLECTOR_URL", collector.url)
    monkeypatch.setenv("HAMUSTRO_SHARED_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("HAMUSTRO_QUEUE_DIR", str(tmp_path / "q"))
    # close() at the app's end has time enough to send, however busy the machine
    monkeypatch.setenv("HAMUSTRO_CLOSE_TIMEOUT", "60")
    return tmp_path / "q"


@pytest.fixture
def handler(collector: DevCollector, tmp_path: Path) -> Iterator[HamustroHandler]:
    """A handler on the root logger (where the frameworks' loggers propagate)."""
    h = HamustroHandler(**tracker_config(collector, tmp_path / "q"))
    root = logging.getLogger()
    root.addHandler(h)
    root.setLevel(logging.INFO)
    yield h
    root.removeHandler(h)
    h.close()


def by_event(events: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Events by (name, parameters)."""
    return {(e["event"], e["parameters"]): e for e in events}


# -- FastAPI / Starlette ---------------------------------------------------------------


def test_fastapi_example_lifespan_closes_the_handler_and_each_request_has_its_user(
    collector: DevCollector, from_environment: Path
) -> None:
    testclient = pytest.importorskip("fastapi.testclient")
    example = load_example("fastapi_app")
    try:
        with testclient.TestClient(example.app) as client:
            assert client.post("/orders/1?total=12", headers={"X-User-Id": "7"}).json() == {
                "ok": True
            }
            assert client.post("/orders/2?total=5", headers={"X-User-Id": "8"}).status_code == 200
            assert client.get("/orders/2", headers={"X-User-Id": "8"}).json() == {"order": 2}
            assert client.get("/orders/3").status_code == 200  # no user
            assert collector.events() == []  # 6 events: under queue_size, nothing sent yet
    finally:
        del sys.modules["fastapi_app"]
    # the lifespan's end closed the handler, which sent what was queued
    assert not any(isinstance(h, HamustroHandler) for h in logging.getLogger().handlers)
    got = by_event(collector.wait_for(6))
    users = {key: e["user_id"] for key, e in got.items()}
    assert users == {
        ("order_placed", '{"total":12}'): 7,
        ("receipt_sent", '{"order":1}'): 7,  # a background task: still the request's user
        ("order_placed", '{"total":5}'): 8,
        ("receipt_sent", '{"order":2}'): 8,
        ("order_viewed", '{"order":2}'): 8,  # a def endpoint, run on a thread
        ("order_viewed", '{"order":3}'): None,
    }
    assert {e["client_id"] for e in got.values()} == {"shop-api"}


def test_asgi_middleware_keeps_concurrent_requests_apart_and_survives_a_failing_fields(
    collector: DevCollector, handler: HamustroHandler, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two requests in flight at once on one event loop, each with its own user."""
    import asyncio

    httpx = pytest.importorskip("httpx")
    starlette_apps = pytest.importorskip("starlette.applications")
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from hamustro_logging.integrations.asgi import ContextMiddleware, Scope

    log = logging.getLogger("tests.asgi")
    both_in = asyncio.Event()
    inside: list[int] = []

    async def order(request: Request) -> JSONResponse:
        inside.append(1)
        if len(inside) == 2:
            both_in.set()
        await asyncio.wait_for(both_in.wait(), 10)  # the other request is in flight too
        log.info("order", extra={"event": "order", "params": {"n": request.query_params["n"]}})
        return JSONResponse(dict(current_context()))

    def fields(scope: Scope) -> Mapping[str, Any] | None:
        user = dict(scope["headers"])[b"x-user-id"]  # KeyError without the header
        return {"user_id": int(user)}

    app = starlette_apps.Starlette(routes=[Route("/order", order)])
    app.add_middleware(ContextMiddleware, fields=fields)

    async def main() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            answers = list(
                await asyncio.gather(
                    c.get("/order?n=1", headers={"X-User-Id": "1"}),
                    c.get("/order?n=2", headers={"X-User-Id": "2"}),
                )
            )
            both_in.set()
            answers.append(await c.get("/order?n=3"))  # fields() raises: no context, served
        return [a.json() for a in answers]

    assert asyncio.run(main()) == [{"user_id": 1}, {"user_id": 2}, {}]
    assert handler.flush(timeout=10)
    got = by_event(collector.wait_for(3))
    assert {key[1]: e["user_id"] for key, e in got.items()} == {
        '{"n":"1"}': 1, '{"n":"2"}': 2, '{"n":"3"}': None,
    }  # fmt: skip
    err = capsys.readouterr().err
    assert (
        "hamustro-logging: hamustro_logging ContextMiddleware (ASGI): this request runs "
        "without a context: KeyError: b'x-user-id'"
    ) in err


# -- Django -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_client() -> Iterator[Any]:
    """Django with the example's MIDDLEWARE, the auth apps and an in-memory database."""
    pytest.importorskip("django")
    import django
    from django.conf import settings

    settings_example = load_example("django_settings")
    del sys.modules["django_settings"]
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="tests-only",  # noqa: S106 -- a test setting, not a credential
            ALLOWED_HOSTS=["testserver"],
            INSTALLED_APPS=[
                "django.contrib.auth",
                "django.contrib.contenttypes",
                "django.contrib.sessions",
                "django.contrib.messages",
            ],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            MIDDLEWARE=settings_example.MIDDLEWARE,
            ROOT_URLCONF=__name__,
            LOGGING_CONFIG=None,  # the test's handler, not the example's LOGGING
            USE_TZ=True,
        )
        django.setup()
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0, interactive=False)
    yield Client()


def django_checkout(request: Any) -> Any:
    """The view of the Django tests (their ROOT_URLCONF is this module)."""
    from django.http import JsonResponse

    logging.getLogger("shop.views").info(
        "order placed", extra={"event": "order_placed", "params": {"total": 12}}
    )
    return JsonResponse(dict(current_context()))


def __getattr__(name: str) -> Any:
    # ROOT_URLCONF=this module: Django reads urlpatterns only once configured.
    if name == "urlpatterns":
        from django.urls import path

        return [path("checkout", django_checkout)]
    raise AttributeError(name)


def test_django_middleware_sets_the_signed_in_user(
    collector: DevCollector, handler: HamustroHandler, django_client: Any
) -> None:
    from django.contrib.auth.models import User

    assert (
        "hamustro_logging.integrations.django.ContextMiddleware"
        in __import__("django.conf").conf.settings.MIDDLEWARE
    )
    user = User.objects.create_user("ada", password="not-used-here")  # noqa: S106
    assert django_client.get("/checkout").json() == {}  # anonymous: no user
    django_client.force_login(user)
    assert django_client.get("/checkout").json() == {"user_id": user.pk}
    django_client.logout()
    assert handler.flush(timeout=10)
    users = [e["user_id"] for e in sorted(collector.wait_for(2), key=lambda e: e["nr"])]
    assert users == [None, user.pk]


def test_django_middleware_fields_can_be_overridden(
    collector: DevCollector, handler: HamustroHandler, django_client: Any
) -> None:
    from django.test import RequestFactory

    from hamustro_logging.integrations.django import ContextMiddleware

    class ByTenant(ContextMiddleware):
        def fields(self, request: Any) -> Mapping[str, Any] | None:
            return {"params": {"tenant": request.headers["X-Tenant"]}}

    middleware = ByTenant(django_checkout)
    answer = middleware(RequestFactory().get("/checkout", headers={"X-Tenant": "acme"}))
    assert answer.status_code == 200
    assert handler.flush(timeout=10)
    (event,) = collector.wait_for(1)
    assert event["parameters"] == '{"tenant":"acme","total":12}'


# -- Flask ------------------------------------------------------------------------------


def test_flask_example_sets_the_user_per_request(
    collector: DevCollector, from_environment: Path
) -> None:
    pytest.importorskip("flask")
    example = load_example("flask_app")
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, HamustroHandler))
    try:
        client = example.app.test_client()
        order = {"total": 12}
        assert client.post("/orders", json=order, headers={"X-User-Id": "7"}).json == {"ok": True}
        assert client.post("/orders", json=order).json == {"ok": True}  # not signed in
        assert client.post("/orders", json=order, headers={"X-User-Id": "8"}).json == {"ok": True}
        assert handler.flush(timeout=10)
    finally:
        del sys.modules["flask_app"]
        logging.getLogger().removeHandler(handler)
        handler.close()
    users = [e["user_id"] for e in sorted(collector.wait_for(3), key=lambda e: e["nr"])]
    assert users == [7, None, 8]


def test_flask_init_app_leaves_the_context_when_the_view_fails(
    collector: DevCollector, handler: HamustroHandler, capsys: pytest.CaptureFixture[str]
) -> None:
    flask = pytest.importorskip("flask")
    from hamustro_logging.integrations import flask as hamustro_flask

    app = flask.Flask("tests.flask")
    seen: list[dict[str, Any]] = []

    def fields() -> Mapping[str, Any] | None:
        return {"user_id": int(flask.request.args["user"])}  # KeyError without ?user=

    hamustro_flask.init_app(app, fields)

    def fail() -> str:
        seen.append(dict(current_context()))
        logging.getLogger("tests.flask").info("x", extra={"event": "failing_view"})
        raise RuntimeError("the view failed")

    def ok() -> str:
        seen.append(dict(current_context()))
        return "ok"

    app.add_url_rule("/fail", view_func=fail)
    app.add_url_rule("/ok", view_func=ok)

    client = app.test_client()
    assert client.get("/fail?user=3").status_code == 500
    assert dict(current_context()) == {}  # left, though the view raised
    assert client.get("/ok").status_code == 200  # fields() raised: served without a context
    assert seen == [{"user_id": 3}, {}]
    assert "init_app (Flask): this request runs without a context: BadRequestKeyError" in (
        capsys.readouterr().err
    )
    assert handler.flush(timeout=10)
    (event,) = collector.wait_for(1)
    assert (event["event"], event["user_id"]) == ("failing_view", 3)


def test_the_package_and_its_adapters_import_without_any_framework() -> None:
    """Each adapter imports its framework only when used: none is a dependency.

    Run where the frameworks cannot be imported at all (an import hook
    refuses them), as in an app that has none of them installed.
    """
    import subprocess

    script = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in {'django', 'flask', 'celery', 'starlette',\n"
        "                                      'fastapi'}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Absent())\n"
        "import hamustro_logging\n"
        "from hamustro_logging.integrations import asgi, celery, django, flask\n"
        "try:\n"
        "    flask.init_app(None, dict)\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "No module named 'flask'\n"  # imported when used, not before
