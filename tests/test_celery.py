"""Celery: ``examples/celery_app.py`` in a real worker (prefork pool, filesystem broker).

The worker runs the example as it is, with a broker folder of the test's own
instead of the example's Redis: its ``setup_logging`` receiver configures the
handler in the worker's main process, the pool processes inherit it, and
``hamustro_celery.connect`` gives every task a context from its arguments.
Tasks with and without a user alternate, and each pool process is recycled
after two tasks, so a context that outlived its task, or a pool process that
lost its events, shows at the collector. Then a warm shutdown (SIGTERM).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hamustro_logging.collector import DevCollector

from .support import TEST_SECRET, pending_in

ROOT = Path(__file__).resolve().parent.parent

#: The worker's app: the example, with the test's broker folder and result folder.
WORKER_APP = """
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, {examples!r})
from celery_app import app, send_receipt  # the example, as it is

app.conf.update(
    broker_url="filesystem://",
    broker_transport_options={{
        "data_folder_in": str(HERE / "broker"),
        "data_folder_out": str(HERE / "broker"),
        "polling_interval": 0.05,
    }},
    broker_connection_retry_on_startup=True,
    result_backend="file://" + str(HERE / "results"),  # each task's outcome, a file per task
    worker_prefetch_multiplier=1,
    worker_max_tasks_per_child=2,  # recycled: a pool process ends after two tasks
    worker_enable_remote_control=False,
)
"""

#: Sends the tasks through the broker folder, as the app's producer would.
SEND_TASKS = """
import sys

sys.path.insert(0, ".")
from worker_app import send_receipt

for order in range(int(sys.argv[1])):
    if order % 2:
        send_receipt.delay(order)  # no user
    else:
        send_receipt.delay(order, user_id=100 + order)
"""

TASKS = 12


@pytest.fixture
def worker_folder(tmp_path: Path) -> Iterator[Path]:
    for name in ("broker", "results"):
        (tmp_path / name).mkdir()
    (tmp_path / "worker_app.py").write_text(WORKER_APP.format(examples=str(ROOT / "examples")))
    yield tmp_path


def environment(collector: DevCollector, queue_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAMUSTRO_")}
    env.update(
        HAMUSTRO_COLLECTOR_URL=collector.url,
        HAMUSTRO_SHARED_SECRET_KEY=TEST_SECRET,
        HAMUSTRO_QUEUE_DIR=str(queue_dir),
        HAMUSTRO_CLOSE_TIMEOUT="60",  # the warm shutdown's close() has time enough to send
    )
    return env


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_celery_worker_example_context_per_task_recycling_and_warm_shutdown(
    collector: DevCollector, worker_folder: Path
) -> None:
    pytest.importorskip("celery")
    queue_dir = worker_folder / "q"
    env = environment(collector, queue_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(worker_folder), env.get("PYTHONPATH", "")])
    sender = subprocess.run(
        [sys.executable, "-c", SEND_TASKS, str(TASKS)],
        cwd=worker_folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sender.returncode == 0, sender.stderr
    argv = [sys.executable, "-m", "celery", "-A", "worker_app", "worker", "--pool", "prefork"]
    argv += ["--concurrency", "2", "--without-heartbeat", "--without-gossip", "--without-mingle"]
    with (worker_folder / "worker.err").open("wb") as err:
        worker = subprocess.Popen(
            argv, cwd=worker_folder, env=env, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,
        )  # fmt: skip
    try:
        results = worker_folder / "results"
        wait_until(
            lambda: len(os.listdir(results)) == TASKS or worker.poll() is not None,
            90,
            f"an outcome for each of the {TASKS} tasks",
        )
        assert worker.poll() is None, (worker_folder / "worker.err").read_text()[-3000:]
        outcomes = [json.loads((results / name).read_text()) for name in os.listdir(results)]
        assert {o["status"] for o in outcomes} == {"SUCCESS"}
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        assert worker.wait(timeout=90) == 0, (worker_folder / "worker.err").read_text()[-3000:]
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
    # Delivered by the worker itself: its main process moved every pool
    # process's journal (recycled ones included) and sent at its close().
    assert pending_in(queue_dir) == 0
    events = collector.wait_for(TASKS)
    assert len(events) == TASKS
    got = {json.loads(e["parameters"])["order"]: e for e in events}
    assert sorted(got) == list(range(TASKS))
    for order, event in got.items():
        assert event["user_id"] == (None if order % 2 else 100 + order), order
        assert json.loads(event["parameters"]) == {
            "task": "celery_app.send_receipt",
            "order": order,
        }
        assert event["client_id"] == "shop-worker"


def test_a_failing_task_leaves_its_context_and_a_failing_fields_runs_the_task_without(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In-process (eager) tasks: the same signals, sent around the task's body."""
    celery = pytest.importorskip("celery")
    from hamustro_logging import current_context
    from hamustro_logging.integrations import celery as hamustro_celery

    app = celery.Celery("tests.celery", broker="memory://")
    app.conf.update(task_always_eager=True, task_eager_propagates=False)
    seen: list[dict[str, object]] = []

    def record_context(user: int) -> None:
        seen.append(dict(current_context()))
        if user == 2:
            raise RuntimeError("the task failed")

    task = app.task(name="tests.record_context")(record_context)
    disconnect = hamustro_celery.connect(lambda task, args, kwargs: {"user_id": 10 // args[0]})
    try:
        task.delay(1)
        assert task.delay(2).failed()
        assert dict(current_context()) == {}  # left, though the task raised
        task.delay(0)  # fields() raises ZeroDivisionError: the task runs without a context
    finally:
        disconnect()
    task.delay(5)  # disconnected: no context any more
    assert seen == [{"user_id": 10}, {"user_id": 5}, {}, {}]
    assert (
        "hamustro_logging connect (Celery): this task runs without a context: "
        "ZeroDivisionError: integer division or modulo by zero"
    ) in capsys.readouterr().err
