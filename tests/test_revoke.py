"""Revoking a request (pipeline/revoke.py, registry/governance.py `revoke`, registry/ledger.py `revoke`):
the refusals, and the re-derivation drained by the Prefect flow on its test harness — a tiny model built
from config as the base, continual UCE, the real ledger and MLflow store under a temporary LETHE_HOME.
(The shapes-world numbers — the revoked concept back, the others still erased — are bench/RESULTS.md's.)"""

from __future__ import annotations

import json

import pytest

from registry.ledger import (
    CANCELLED,
    PROMOTED,
    REJECTED,
    REVOKED,
    SUPERSEDED,
    Ledger,
    RequestSpec,
    RevocationRefused,
    UnknownRequest,
)
from registry.versions import PRODUCTION, TAG_REVOKED, TAG_SUPERSEDED_BY, ModelRegistry

PASS = "name: test\nthresholds:\n  - metric: forget.gate.ua\n    min: 0.0\n"


def _stores():
    from pipeline.settings import load_settings

    settings = load_settings()
    registry = ModelRegistry(settings.mlflow_tracking_uri, settings.model_name, settings.artifact_root)
    return settings, Ledger(settings.ledger_url), registry


def _erase(settings, ledger, concepts, **drain):
    from flows.continual import continual_unlearning

    ledger.submit_many(
        [RequestSpec(c, "alice", id=f"r-{c}", method="continual-uce") for c in concepts], lineage=settings.model_name
    )
    return continual_unlearning(auto_approve=True, **drain)


@pytest.mark.slow
def test_revoking_the_middle_request_re_derives_the_rest_and_moves_production_with_the_head(
    prefect_api,
    flow_home,
    monkeypatch,
):
    from flows.continual import continual_unlearning
    from pipeline.revoke import revoke

    monkeypatch.setenv("LETHE_POLICY", str(_policy(flow_home)))
    monkeypatch.setenv("LETHE_APPROVERS", "bob")
    settings, ledger, registry = _stores()
    first = _erase(settings, ledger, ["circle", "striped", "star"])
    assert [r["state"] for r in first] == [PROMOTED] * 3
    versions = {r["concept"]: r["candidate_version"] for r in first}
    production = registry.alias_version(PRODUCTION)
    assert production == versions["star"]

    # refusals change nothing
    before = (ledger.requests(), ledger.history())
    with pytest.raises(UnknownRequest):
        revoke(settings, "r-teapot", approver="bob", reason="licence obtained")
    with pytest.raises(Exception, match="cannot approve or reject"):  # self-approval
        revoke(load_settings_with(monkeypatch, "alice,bob"), "r-striped", approver="alice", reason="mine")
    assert (ledger.requests(), ledger.history()) == before

    result = revoke(settings, "r-striped", approver="bob", reason="licence obtained")
    assert len(result["replays"]) == 1 and result["parent_version"] == versions["circle"]
    assert registry.alias_version(PRODUCTION) == production  # nothing moves until the head is approved
    with pytest.raises(RevocationRefused, match="pending"):
        revoke(settings, "r-circle", approver="bob", reason="again")
    with pytest.raises(Exception, match="being re-derived"):  # no new request while the lineage re-derives
        ledger.submit(RequestSpec("heart", "alice"), lineage=settings.model_name)

    [replayed] = continual_unlearning(auto_approve=True)
    assert replayed["state"] == PROMOTED and replayed["replays"] == "r-star"
    assert replayed["parent_version"] == versions["circle"]  # re-derived from the version before striped
    head = replayed["candidate_version"]
    assert registry.alias_version(PRODUCTION) == head
    assert registry.erased_in(head) == ["circle", "star"]
    assert ledger.get("r-striped").state == REVOKED and ledger.get("r-star").state == SUPERSEDED
    assert json.loads(registry.version_tags(versions["striped"])[TAG_REVOKED])["reason"] == "licence obtained"
    assert json.loads(registry.version_tags(versions["star"])[TAG_SUPERSEDED_BY])["version"] == head
    measured = replayed["revoked_concept"]
    assert measured["concept"] == "striped" and 0 <= measured["relative"] and measured["production_version"] == head
    events = [h["event"] for h in ledger.history()]
    assert "revocation-requested" in events and "revocation-completed" in events and "revocation-measured" in events
    with pytest.raises(RevocationRefused, match="only a promoted request"):
        revoke(settings, "r-striped", approver="bob", reason="twice")
    # the re-derived lineage keeps the closed form's terms of what stays erased, not of the revoked concept
    from pipeline.prepare import load_parent_model

    kept = load_parent_model(settings, f"models:/{settings.model_name}/{head}").lineage
    assert {k.rsplit("::", 1)[0] for k in kept} == {"circle", "star"}
    # revoking the last erasure: nothing to replay, production goes straight back to the version before it
    last = revoke(settings, replayed["id"], approver="bob", reason="star licensed too")
    assert last["replays"] == [] and last["production_version"] == versions["circle"] == registry.alias_version(
        PRODUCTION
    )
    assert ledger.get(replayed["id"]).state == REVOKED
    # a revoked concept can be requested again
    ledger.submit(RequestSpec("striped", "alice", id="r-striped-again"), lineage=settings.model_name)


@pytest.mark.slow
def test_a_rejected_replay_ends_the_chain_and_revokes_nothing(prefect_api, flow_home, monkeypatch):
    from flows.continual import continual_unlearning
    from pipeline.revoke import revoke

    monkeypatch.setenv("LETHE_POLICY", str(_policy(flow_home)))
    monkeypatch.setenv("LETHE_APPROVERS", "bob")
    settings, ledger, registry = _stores()
    _erase(settings, ledger, ["circle", "striped", "star"])
    production = registry.alias_version(PRODUCTION)
    result = revoke(settings, "r-circle", approver="bob", reason="granted in error")
    assert len(result["replays"]) == 2
    monkeypatch.setenv("LETHE_POLICY", str(_policy(flow_home, bound=2.0)))  # every replay fails its gate
    [first, *rest] = continual_unlearning(auto_approve=True)
    assert first["state"] == REJECTED and rest == []
    assert ledger.get(result["replays"][1]).state == CANCELLED
    assert ledger.get("r-circle").state == PROMOTED and registry.alias_version(PRODUCTION) == production
    assert ledger.revocation(result["revocation"]).state == "failed"


def test_a_request_never_promoted_or_a_queue_in_flight_is_refused(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.submit(RequestSpec("circle", "alice", id="r1"), lineage="l")
    with pytest.raises(RevocationRefused, match="only a promoted request"):  # queued, never promoted
        ledger.revoke("r1", approver="bob", reason="x", production_version=None)
    ledger.claim_head("l", actor="t")
    ledger.transition("r1", "awaiting-approval", actor="t", candidate_version=1)
    ledger.transition("r1", "promoting", actor="bob")
    ledger.transition("r1", PROMOTED, actor="bob")
    ledger.submit(RequestSpec("star", "alice", id="r2"), lineage="l")
    before = (ledger.requests(), ledger.history())
    with pytest.raises(RevocationRefused, match="in the queue"):  # work in flight: it would build on the old version
        ledger.revoke("r1", approver="bob", reason="x", production_version=1)
    assert (ledger.requests(), ledger.history()) == before


def load_settings_with(monkeypatch, approvers: str):
    from pipeline.settings import load_settings

    monkeypatch.setenv("LETHE_APPROVERS", approvers)
    return load_settings()


def _policy(home, bound: float = 0.0):
    path = home / f"policy-{bound}.yaml"
    path.write_text(PASS.replace("0.0", str(bound)))
    return path
