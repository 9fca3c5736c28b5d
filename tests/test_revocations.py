"""Revocations in the ledger and the registry (registry/ledger.py `Ledger.revoke`, registry/governance.py
`revoke`, `finish_interrupted`): a revoke killed between any two of its writes leaves the lineage usable,
and of two concurrent revokes exactly one wins.

Real ledgers (a SQLite file, and PostgreSQL when configured) and a real MLflow store whose versions are
created directly (no weights: what is tested is the order of the writes). A kill is an exception raised
at the write: inside a transaction it rolls back exactly as a dropped connection would; between
transactions it leaves what was committed, as a killed process would.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from registry.governance import approve, finish_interrupted, revoke
from registry.ledger import (
    AWAITING_APPROVAL,
    PROMOTED,
    PROMOTING,
    REVOKED,
    SUPERSEDED,
    Ledger,
    RequestSpec,
    RevocationRefused,
)
from registry.versions import PRODUCTION, TAG_COMPLETE, TAG_GATE, TAG_REQUEST, TAG_REVOKED, ModelRegistry

MODEL = "revoke-t2i"
APPROVERS = ["bob", "carol"]


class Killed(Exception):
    """Stands for the process dying at this write."""


def _promote_in_ledger(ledger: Ledger, request_id: str, version: int, parent: int | None, lineage=MODEL) -> None:
    ledger.submit(RequestSpec(concept=f"concept of {request_id}", requester="alice", id=request_id), lineage=lineage)
    assert ledger.claim_head(lineage, actor="flow").id == request_id
    ledger.transition(request_id, AWAITING_APPROVAL, actor="flow", candidate_version=version, parent_version=parent)
    ledger.transition(request_id, PROMOTING, actor="bob")
    ledger.transition(request_id, PROMOTED, actor="bob")


def _three_promoted(ledger: Ledger, lineage=MODEL) -> None:
    for k, request_id in enumerate(("r1", "r2", "r3")):
        _promote_in_ledger(ledger, f"{lineage}-{request_id}", k + 1, k or None, lineage=lineage)


def _usable(ledger: Ledger, lineage=MODEL) -> None:
    """A new request is accepted (not refused because a revocation is stuck pending)."""
    ledger.submit(RequestSpec(concept="a new concept", requester="alice"), lineage=lineage)


@pytest.mark.parametrize("killed_at", [1, 2, 3])
def test_a_revoke_killed_between_its_ledger_writes_leaves_nothing_half_written(ledger_url, monkeypatch, killed_at):
    """Ledger.revoke writes the revocation, its audit event and one request per replay (two here). Killed at
    the k-th audited write, nothing of it stays: no revocation pending for ever, no submission refused."""
    ledger = Ledger(ledger_url)
    _three_promoted(ledger)
    before = (ledger.requests(), ledger.history())
    real_audit, writes = Ledger._audit, []

    def audit_then_die(conn, *args, **kwargs):
        writes.append(args)
        if len(writes) == killed_at:
            raise Killed()
        return real_audit(conn, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Ledger, "_audit", staticmethod(audit_then_die))
        with pytest.raises(Killed):
            ledger.revoke(f"{MODEL}-r1", approver="bob", reason="licence obtained", production_version=3)
    assert (ledger.requests(), ledger.history()) == before
    assert ledger.pending_revocation(MODEL) is None
    revocation = ledger.revoke(f"{MODEL}-r1", approver="bob", reason="licence obtained", production_version=3)
    assert [ledger.get(i).replays for i in revocation.replays] == [f"{MODEL}-r2", f"{MODEL}-r3"]


def test_two_concurrent_revokes_exactly_one_wins(ledger_url):
    rounds = 10
    setup = Ledger(ledger_url)
    for k in range(rounds):
        _three_promoted(setup, lineage=f"lineage-{k}")
    for k in range(rounds):
        lineage, won, refused = f"lineage-{k}", [], []
        start = threading.Barrier(2)

        def ask(request_id, lineage=lineage, won=won, refused=refused, start=start):
            ledger = Ledger(ledger_url)  # a process of its own would have its own engine too
            start.wait()
            try:
                won.append(ledger.revoke(request_id, approver="bob", reason="r", production_version=3))
            except RevocationRefused as refusal:
                refused.append(str(refusal))

        threads = [threading.Thread(target=ask, args=(f"{lineage}-{r}",)) for r in ("r1", "r2")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(won) == 1 and len(refused) == 1, f"round {k}: won {won}, refused {refused}"
        assert "pending" in refused[0]
        asked = [h for h in setup.history() if h["event"] == "revocation-requested"]
        assert sum(h["request_id"].startswith(f"{lineage}-") for h in asked) == 1
        queued = [r for r in setup.requests(lineage) if r.replays]
        assert [r.id for r in queued] == list(won[0].replays)


# ---------------------------------------------------------------- the registry's writes after the ledger's
@pytest.fixture
def stores(ledger_url, tmp_path):
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", MODEL, str(tmp_path / "artifacts"))
    registry.client.create_registered_model(MODEL)
    return Ledger(ledger_url), registry


def _version(registry: ModelRegistry, request_id: str) -> int:
    created = registry.client.create_model_version(
        MODEL, source="file:///nowhere", tags={TAG_REQUEST: request_id, TAG_GATE: "passed", TAG_COMPLETE: "true"}
    )
    return int(created.version)


def _erase(ledger: Ledger, registry: ModelRegistry, request_id: str) -> int:
    parent = registry.alias_version(PRODUCTION)
    version = _version(registry, request_id)
    ledger.submit(RequestSpec(concept=f"concept of {request_id}", requester="alice", id=request_id), lineage=MODEL)
    assert ledger.claim_head(MODEL, actor="flow").id == request_id
    ledger.transition(request_id, AWAITING_APPROVAL, actor="flow", candidate_version=version, parent_version=parent)
    approve(ledger, registry, request_id, approver="bob", approvers=APPROVERS)
    return version


def _die(*args, **kwargs):
    raise Killed()


@pytest.mark.parametrize(
    "killed_at",
    [
        "ModelRegistry.point_production",  # after the ledger's transaction, before production moves back
        "ModelRegistry.mark_revoked",  # after production moved, before the version is tagged
        "Ledger.finish_revocation",  # after the tags, before the ledger marks it completed
    ],
)
def test_a_revoke_killed_after_its_ledger_write_is_finished_on_resume(stores, monkeypatch, killed_at):
    ledger, registry = stores
    v1 = _erase(ledger, registry, "r1")
    v2 = _erase(ledger, registry, "r2")
    owner, method = killed_at.split(".")
    with monkeypatch.context() as patch:
        patch.setattr({"ModelRegistry": ModelRegistry, "Ledger": Ledger}[owner], method, _die)
        with pytest.raises(Killed):
            revoke(ledger, registry, "r2", approver="bob", approvers=APPROVERS, reason="licence obtained")
    _usable(ledger)  # at once: a new request is queued; the drain finishes the revocation before claiming it

    [pending] = [r for r in ledger.lineage_revocations(MODEL) if r.state == "pending"]
    assert finish_interrupted(ledger, registry, MODEL, actor="flow") == [pending.id]
    assert ledger.revocation(pending.id).state == "completed" and ledger.pending_revocation(MODEL) is None
    assert ledger.get("r2").state == REVOKED and TAG_REVOKED in registry.version_tags(v2)
    assert registry.alias_version(PRODUCTION) == v1
    assert finish_interrupted(ledger, registry, MODEL, actor="flow") == []  # nothing left: idempotent
    assert ledger.claim_head(MODEL, actor="flow").concept == "a new concept"  # and it builds on v1


def test_a_revocation_whose_head_was_promoted_but_never_completed_is_finished_on_resume(stores, monkeypatch):
    ledger, registry = stores
    _erase(ledger, registry, "r1")
    v2 = _erase(ledger, registry, "r2")
    result = revoke(ledger, registry, "r1", approver="bob", approvers=APPROVERS, reason="licence obtained")
    [head_id] = result["replays"]
    head = _version(registry, head_id)
    assert ledger.claim_head(MODEL, actor="flow").id == head_id
    ledger.transition(head_id, AWAITING_APPROVAL, actor="flow", candidate_version=head, parent_version=None)
    with monkeypatch.context() as patch:
        patch.setattr(Ledger, "finish_revocation", _die)
        with pytest.raises(Killed):
            approve(ledger, registry, head_id, approver="bob", approvers=APPROVERS)
    assert ledger.get(head_id).state == PROMOTED and registry.alias_version(PRODUCTION) == head
    _usable(ledger)  # the chain is done: new requests are not held back by the unfinished bookkeeping

    assert finish_interrupted(ledger, registry, MODEL, actor="flow") == [result["revocation"]]
    assert (ledger.get("r1").state, ledger.get("r2").state) == (REVOKED, SUPERSEDED)
    assert ledger.revocation(result["revocation"]).state == "completed"
    assert registry.version_tags(v2)["lethe.superseded_by"]


def test_a_ledger_from_before_the_revocations_table_gets_its_revocations_back(ledger_url):
    """Older ledgers kept revocations only as audit events: opening one copies them into the table."""
    ledger = Ledger(ledger_url)
    _three_promoted(ledger)
    asked = ledger.revoke(f"{MODEL}-r1", approver="bob", reason="licence obtained", production_version=3)
    with ledger.engine.begin() as conn:  # what such a ledger looks like: the events, no rows
        conn.execute(text("DELETE FROM lethe_revocations"))
    assert ledger.pending_revocation(MODEL) is None
    assert Ledger(ledger_url).pending_revocation(MODEL) == asked


def test_an_answer_never_samples_the_revocation_is_measured_by_its_own_task(tmp_path, monkeypatch):
    """Approving a chain's head completes the revocation and says so; measuring the revoked concept (a whole
    sampling evaluation) is left to the flow's GPU-slot task, and a revocation completed outside a run is
    listed for the next drain until it is measured."""
    from pipeline import revoke as revoke_step
    from pipeline.decide import apply_answer
    from pipeline.settings import load_settings
    from pipeline.values import Answer

    monkeypatch.setenv("LETHE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LETHE_MODEL_NAME", MODEL)
    monkeypatch.setenv("LETHE_APPROVERS", "bob")
    monkeypatch.delenv("LETHE_CONFIG", raising=False)
    settings = load_settings()
    ledger = Ledger(settings.ledger_url)
    registry = ModelRegistry(settings.mlflow_tracking_uri, MODEL, settings.artifact_root)
    registry.client.create_registered_model(MODEL)
    _erase(ledger, registry, "r1")
    _erase(ledger, registry, "r2")
    result = revoke(ledger, registry, "r1", approver="bob", approvers=["bob"], reason="licence obtained")
    [head_id] = result["replays"]
    assert ledger.claim_head(MODEL, actor="flow").id == head_id
    ledger.transition(
        head_id, AWAITING_APPROVAL, actor="flow", candidate_version=_version(registry, head_id), parent_version=None
    )
    monkeypatch.setattr(revoke_step, "measure_revoked", _die)  # an answer that samples would die here

    answered = apply_answer(settings, head_id, Answer(approve=True, approver="bob"))
    assert answered["state"] == PROMOTED and answered["revocation_completed"] == result["revocation"]
    assert revoke_step.unmeasured_revocations(settings) == [result["revocation"]]
    ledger.record_event(revoke_step.MEASURED, actor="flow", detail={}, request_id="r1")
    assert revoke_step.unmeasured_revocations(settings) == []


def test_interrupted_work_is_seen_from_the_ledger_alone(stores, monkeypatch):
    """The drain asks the ledger whether a decision was cut short before it opens the registry (an
    unreachable registry then fails the request it claims, with the reason, instead of the claim)."""
    from registry.governance import interrupted

    ledger, registry = stores
    _erase(ledger, registry, "r1")
    _erase(ledger, registry, "r2")
    assert not interrupted(ledger, MODEL)
    with monkeypatch.context() as patch:
        patch.setattr(ModelRegistry, "point_production", _die)
        with pytest.raises(Killed):
            revoke(ledger, registry, "r2", approver="bob", approvers=APPROVERS, reason="licence obtained")
    assert interrupted(ledger, MODEL)
    finish_interrupted(ledger, registry, MODEL, actor="flow")
    assert not interrupted(ledger, MODEL)
