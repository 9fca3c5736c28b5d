"""The queue-draining flow on Prefect's test harness (a real, temporary Prefect API), a tiny model
built from config as the base, and the real ledger and MLflow store under a temporary LETHE_HOME
(fixtures `prefect_api` and `flow_home`: tests/conftest.py)."""

from __future__ import annotations

import json

import pytest

from registry.ledger import FAILED, PROMOTED, REJECTED, Ledger, RequestSpec
from registry.versions import PRODUCTION, ModelRegistry


def _policy(path, bound):
    path.write_text(f"name: test\nthresholds:\n  - metric: forget.gate.ua\n    min: {bound}\n")
    return str(path)


def _ledger_and_registry():
    from pipeline.settings import load_settings

    settings = load_settings()
    return (
        settings,
        Ledger(settings.ledger_url),
        ModelRegistry(settings.mlflow_tracking_uri, settings.model_name, settings.artifact_root),
    )


@pytest.mark.slow
def test_queue_is_drained_in_order_with_auto_approval(prefect_api, flow_home, monkeypatch):
    from flows.continual import continual_unlearning
    from pipeline.decide import AUTO_APPROVAL_POLICY

    monkeypatch.setenv("LETHE_POLICY", _policy(flow_home / "pass.yaml", 0.0))
    settings, ledger, registry = _ledger_and_registry()
    ledger.submit_many(
        [RequestSpec("circle", "alice", id="r1"), RequestSpec("striped", "alice", id="r2")], lineage=settings.model_name
    )

    from pipeline import prepare, unlearn

    loads = {"parent": 0, "base": 0}

    def counted(function, key):
        def call(*args, **kwargs):
            loads[key] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(prepare, "load_parent", counted(prepare.load_parent, "parent"))
    monkeypatch.setattr(unlearn, "load_model", counted(unlearn.load_model, "base"))

    results = continual_unlearning(auto_approve=True, unlearn_steps=2)

    assert [(r["id"], r["state"]) for r in results] == [("r1", "promoted"), ("r2", "promoted")]
    assert [r["parent_version"] for r in results] == [None, results[0]["candidate_version"]]
    assert loads == {"parent": 2, "base": 2}, "per request: the parent chain fetched once, the base loaded once"
    assert registry.alias_version(PRODUCTION) == results[1]["candidate_version"]
    assert registry.erased_in(registry.alias_version(PRODUCTION)) == ["circle", "striped"]
    assert [ledger.get(i).state for i in ("r1", "r2")] == [PROMOTED, PROMOTED]
    promoted = [h for h in ledger.history("r1") if h["to_state"] == PROMOTED]
    # approved by a named policy, recorded as one: no pretend person on the approvers list
    assert promoted[0]["actor"] == AUTO_APPROVAL_POLICY and promoted[0]["detail"]["policy"] == AUTO_APPROVAL_POLICY
    assert (
        json.loads(registry.version_tags(results[0]["candidate_version"])["lethe.approval"])["policy"]
        == AUTO_APPROVAL_POLICY
    )


@pytest.mark.slow
def test_failed_gate_rejects_and_leaves_production_alone(prefect_api, flow_home, monkeypatch):
    from flows.continual import continual_unlearning

    monkeypatch.setenv("LETHE_POLICY", _policy(flow_home / "impossible.yaml", 2.0))
    settings, ledger, registry = _ledger_and_registry()
    ledger.submit(RequestSpec("circle", "alice", id="r1"), lineage=settings.model_name)

    [result] = continual_unlearning(auto_approve=True, unlearn_steps=2)

    assert result["state"] == REJECTED and any("forget.gate.ua" in r for r in result["gate_reasons"])
    assert ledger.get("r1").state == REJECTED and "gate failed" in ledger.get("r1").error
    assert registry.alias_version(PRODUCTION) is None


@pytest.mark.slow
def test_a_failing_request_is_marked_failed_and_the_queue_goes_on(prefect_api, flow_home, monkeypatch):
    from flows.continual import continual_unlearning

    monkeypatch.setenv("LETHE_POLICY", str(flow_home / "missing-policy.yaml"))  # evaluation cannot load it
    settings, ledger, _ = _ledger_and_registry()
    ledger.submit_many(
        [RequestSpec("circle", "alice", id="r1"), RequestSpec("star", "alice", id="r2")], lineage=settings.model_name
    )

    results = continual_unlearning(auto_approve=True, unlearn_steps=1)

    assert [r["state"] for r in results] == [FAILED, FAILED]
    assert "policy" in ledger.get("r1").error


@pytest.mark.slow
def test_a_person_approves_a_paused_run_with_lethe_approve(prefect_api, flow_home, monkeypatch):
    """The flow pauses with a typed form; `lethe approve` (in-process here, same Prefect API) refuses
    self-approval, then answers the paused run, which promotes the candidate."""
    import threading
    import time

    from flows.cli import main
    from flows.continual import process_request

    monkeypatch.setenv("LETHE_POLICY", _policy(flow_home / "pass.yaml", 0.0))
    monkeypatch.setenv("LETHE_APPROVERS", "bob,alice")
    settings, ledger, registry = _ledger_and_registry()
    ledger.submit(RequestSpec("circle", "alice", id="r1"), lineage=settings.model_name)
    request = ledger.claim_head(settings.model_name, actor="test")

    outcome = {}
    worker = threading.Thread(
        target=lambda: outcome.update(process_request(request, auto_approve=False, unlearn_steps=1))
    )
    worker.start()
    deadline = time.time() + 300
    while ledger.get("r1").state != "awaiting-approval" and time.time() < deadline:
        time.sleep(0.5)
    assert ledger.get("r1").state == "awaiting-approval"
    assert main(["approve", "r1", "--approver", "alice"]) == 2  # the requester
    assert ledger.get("r1").state == "awaiting-approval"
    assert main(["approve", "r1", "--approver", "bob", "--comment", "checked the grids"]) == 0
    worker.join(timeout=300)
    assert outcome["state"] == "promoted" and outcome["approver"] == "bob"
    assert ledger.get("r1").state == PROMOTED
    assert registry.alias_version(PRODUCTION) == outcome["candidate_version"]
