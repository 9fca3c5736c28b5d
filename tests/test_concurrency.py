"""Prefect global concurrency limits on the drainer (Prefect's test harness, a real temporary API):
one drainer per lineage (`lineage-<model_name>`, limit 1), training under the `gpu` limit.

Processing is replaced by a stand-in flow that only records when it ran and what the limits showed,
so these tests measure the locking, not the training."""

from __future__ import annotations

import threading
import time

import pytest
from prefect import flow, get_client, task

from registry.ledger import FAILED, QUEUED, REJECTED, Ledger, RequestSpec
from registry.requests import Request


@pytest.fixture
def lethe_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LETHE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LETHE_MODEL_NAME", f"lineage-test-{tmp_path.name}"[:60])  # a fresh limit per test
    monkeypatch.delenv("LETHE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    from pipeline.settings import load_settings

    settings = load_settings()
    return settings, Ledger(settings.ledger_url)


def _active_slots(name: str) -> tuple[int, int]:
    with get_client(sync_client=True) as client:
        found = client.read_global_concurrency_limit_by_name(name)
    return found.active_slots, found.limit


def _stand_in_processing(monkeypatch, ledger_url: str, lineage: str, seconds: float) -> list[dict]:
    """Replace the request subflow: record start/end and the lineage limit's slots, then reject."""
    from flows import continual
    from flows.concurrency import lineage_limit

    runs: list[dict] = []

    @flow(name="stand-in-process-request")
    def stand_in(request: Request, auto_approve: bool = False, unlearn_steps: int | None = None) -> dict:
        run = {
            "id": request.id,
            "thread": threading.current_thread().name,
            "start": time.monotonic(),
            "slots": _active_slots(lineage_limit(lineage)),
        }
        time.sleep(seconds)
        Ledger(ledger_url).transition(request.id, REJECTED, actor="stand-in", error="stand-in")
        run["end"] = time.monotonic()
        runs.append(run)
        return {"id": request.id, "concept": request.concept, "state": REJECTED}

    monkeypatch.setattr(continual, "process_request", stand_in)
    return runs


def test_two_drainers_of_one_lineage_take_turns(prefect_api, lethe_home, monkeypatch):
    """Both start while the queue holds two requests. Without the lineage limit the second drainer
    would find the ledger busy (r1 running) and return at once, leaving r2 queued; with it, the second
    waits until the first has finished and released the lineage, then drains r2."""
    from flows.continual import continual_unlearning

    settings, ledger = lethe_home
    ledger.submit_many(
        [RequestSpec("circle", "alice", id="r1"), RequestSpec("star", "alice", id="r2")], lineage=settings.model_name
    )
    runs = _stand_in_processing(monkeypatch, settings.ledger_url, settings.model_name, seconds=3.0)
    results = {}

    def drain(name):
        results[name] = continual_unlearning(max_requests=1)

    first = threading.Thread(target=drain, args=("first",), name="first")
    first.start()
    deadline = time.time() + 120
    while ledger.get("r1").state == QUEUED and time.time() < deadline:  # the first holds the lineage
        time.sleep(0.1)
    second = threading.Thread(target=drain, args=("second",), name="second")
    second.start()
    first.join(timeout=180)
    second.join(timeout=180)

    assert [r["id"] for r in results["first"]] == ["r1"]
    assert [r["id"] for r in results["second"]] == ["r2"], "the second drainer did not wait for the lineage"
    by_id = {run["id"]: run for run in runs}
    assert by_id["r1"]["thread"] == "first" and by_id["r2"]["thread"] == "second"
    assert by_id["r2"]["start"] >= by_id["r1"]["end"]  # never both processing
    assert by_id["r1"]["slots"] == (1, 1) and by_id["r2"]["slots"] == (1, 1)  # held while processing, limit 1
    from flows.concurrency import lineage_limit

    assert _active_slots(lineage_limit(settings.model_name)) == (0, 1)  # released after both


def test_a_drainer_leaves_a_held_lineage_alone_after_waiting(prefect_api, lethe_home, monkeypatch):
    from flows.concurrency import lineage_held
    from flows.continual import continual_unlearning

    settings, ledger = lethe_home
    monkeypatch.setenv("LETHE_LINEAGE_WAIT_SECONDS", "2")
    ledger.submit(RequestSpec("circle", "alice", id="r1"), lineage=settings.model_name)
    runs = _stand_in_processing(monkeypatch, settings.ledger_url, settings.model_name, seconds=0.0)

    with lineage_held(settings.model_name, wait_seconds=10):
        started = time.monotonic()
        assert continual_unlearning() == []
        waited = time.monotonic() - started
    assert waited >= 2 and ledger.get("r1").state == QUEUED and runs == []

    assert [r["id"] for r in continual_unlearning()] == ["r1"]  # free again: it drains


def test_training_holds_a_gpu_slot(prefect_api, lethe_home, monkeypatch, tmp_path):
    """The unlearn-and-evaluate task runs inside the `gpu` limit; the slot is released when it fails."""
    from flows import continual
    from flows.concurrency import GPU_LIMIT

    settings, ledger = lethe_home
    seen = []

    @task(name="stand-in-unlearn-and-evaluate")
    def stand_in(settings_, request, parent, work_dir):
        seen.append(_active_slots(GPU_LIMIT))
        raise RuntimeError("stand-in stops here")

    monkeypatch.setattr(continual, "unlearn_and_evaluate_request", stand_in)
    ledger.submit(RequestSpec("circle", "alice", id="r1"), lineage=settings.model_name)

    [result] = continual.continual_unlearning()

    assert result["state"] == FAILED and "stand-in stops here" in ledger.get("r1").error
    active, limit = seen[0]
    assert active == 1 and limit >= 1
    assert _active_slots(GPU_LIMIT)[0] == 0
