"""Governance where the ledger meets the registry (registry/governance.py): the ledger decides first, the
alias follows, and a decision interrupted between the two is finished on resume.

Approve raced against reject: production never ends on a rejected candidate.

Each round queues one request whose candidate version awaits approval, then an approver and a rejecter
answer it at the same instant from two threads. Whatever the interleaving, exactly one answer wins, and
the ledger and the MLflow `production` alias agree on it: production is the candidate exactly when the
ledger says `promoted`. The ledger is real (SQLite file and PostgreSQL); the registry is a real MLflow
store, its versions created directly (tags as `register_candidate` writes them, no weights): the race
is in the order of the writes, not in what the versions hold.
"""

from __future__ import annotations

import json
import threading
from functools import partial

import pytest

from registry.governance import approve, finish_promotions, reject
from registry.ledger import (
    AWAITING_APPROVAL,
    PROMOTED,
    PROMOTING,
    REJECTED,
    Ledger,
    LedgerError,
    RequestSpec,
    StateConflict,
)
from registry.versions import (
    PRODUCTION,
    TAG_APPROVAL,
    TAG_COMPLETE,
    TAG_GATE,
    TAG_REQUEST,
    ModelRegistry,
    PromotionRefused,
)

MODEL = "race-t2i"
APPROVERS = ["bob", "carol"]
ROUNDS = 50


def _version(registry: ModelRegistry, request_id: str) -> int:
    """A gate-passed, complete version for `request_id` (what register_candidate leaves behind)."""
    created = registry.client.create_model_version(
        MODEL, source="file:///nowhere", tags={TAG_REQUEST: request_id, TAG_GATE: "passed", TAG_COMPLETE: "true"}
    )
    return int(created.version)


def _answer(action, outcomes: list, start: threading.Barrier) -> None:
    start.wait()
    try:
        action()
        outcomes.append("won")
    except (LedgerError, PromotionRefused) as refusal:  # lost the race: a refusal, never a half-write
        outcomes.append(type(refusal).__name__)


def test_approve_raced_against_reject_never_leaves_production_on_a_rejected_candidate(ledger_url, tmp_path):
    ledger = Ledger(ledger_url)
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", MODEL, str(tmp_path / "artifacts"))
    registry.client.create_registered_model(MODEL)
    for k in range(ROUNDS):
        request_id = f"r{k}"
        parent = registry.alias_version(PRODUCTION)
        version = _version(registry, request_id)
        ledger.submit(RequestSpec(concept=f"concept {k}", requester="alice", id=request_id), lineage=MODEL)
        assert ledger.claim_head(MODEL, actor="flow").id == request_id
        ledger.transition(request_id, AWAITING_APPROVAL, actor="flow", candidate_version=version, parent_version=parent)

        outcomes: list[str] = []
        start = threading.Barrier(2)
        answers = (
            partial(approve, ledger, registry, request_id, approver="bob", approvers=APPROVERS),
            partial(reject, ledger, registry, request_id, approver="carol", approvers=APPROVERS, reason="no"),
        )
        approver, rejecter = (threading.Thread(target=_answer, args=(a, outcomes, start)) for a in answers)
        for thread in (approver, rejecter):
            thread.start()
        for thread in (approver, rejecter):
            thread.join(timeout=60)

        state = ledger.get(request_id).state
        production = registry.alias_version(PRODUCTION)
        assert state in (PROMOTED, REJECTED), f"round {k}: {request_id} left {state}"
        assert outcomes.count("won") == 1, f"round {k}: {outcomes}"
        if state == REJECTED:
            assert production == parent, f"round {k}: production is v{production}, rejected candidate v{version}"
        else:
            assert production == version, f"round {k}: promoted v{version} but production is v{production}"


def _awaiting(ledger: Ledger, registry: ModelRegistry, request_id: str) -> int:
    parent = registry.alias_version(PRODUCTION)
    version = _version(registry, request_id)
    ledger.submit(RequestSpec(concept=request_id, requester="alice", id=request_id), lineage=MODEL)
    assert ledger.claim_head(MODEL, actor="flow").id == request_id
    ledger.transition(request_id, AWAITING_APPROVAL, actor="flow", candidate_version=version, parent_version=parent)
    return version


@pytest.fixture
def stores(ledger_url, tmp_path):
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", MODEL, str(tmp_path / "artifacts"))
    registry.client.create_registered_model(MODEL)
    return Ledger(ledger_url), registry


class Killed(Exception):
    """Stands for the approver's process dying between the ledger write and the alias move."""


def test_an_approval_killed_before_its_alias_moved_is_finished_on_resume(stores, monkeypatch):
    ledger, registry = stores
    version = _awaiting(ledger, registry, "r1")
    with monkeypatch.context() as patch:
        patch.setattr(ModelRegistry, "_set_alias", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            approve(ledger, registry, "r1", approver="bob", approvers=APPROVERS)
    assert ledger.get("r1").state == PROMOTING and registry.alias_version(PRODUCTION) is None
    with pytest.raises(StateConflict):  # the approval stands: no rejection can slip in now
        reject(ledger, registry, "r1", approver="carol", approvers=APPROVERS, reason="too late")
    ledger.submit(RequestSpec(concept="star", requester="alice", id="r2"), lineage=MODEL)
    assert ledger.claim_head(MODEL, actor="flow") is None, "the next request waits: its parent is being decided"

    assert finish_promotions(ledger, registry, MODEL, actor="flow") == ["r1"]
    assert ledger.get("r1").state == PROMOTED and registry.alias_version(PRODUCTION) == version
    assert json.loads(registry.version_tags(version)[TAG_APPROVAL])["by"] == "bob"  # the approver's stamp, kept
    assert ledger.claim_head(MODEL, actor="flow").id == "r2"


def test_a_resumed_promotion_whose_production_moved_meanwhile_is_rejected(stores, monkeypatch):
    ledger, registry = stores
    _awaiting(ledger, registry, "r1")
    with monkeypatch.context() as patch:
        patch.setattr(ModelRegistry, "_set_alias", lambda *a, **k: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            approve(ledger, registry, "r1", approver="bob", approvers=APPROVERS)
    other = _version(registry, "elsewhere")
    registry.client.set_registered_model_alias(MODEL, PRODUCTION, str(other))  # an operator moved it by hand
    finish_promotions(ledger, registry, MODEL, actor="flow")
    assert ledger.get("r1").state == REJECTED and "production is version" in ledger.get("r1").error
    assert registry.alias_version(PRODUCTION) == other


def test_alias_moves_are_retried_on_transient_errors(stores, monkeypatch):
    ledger, registry = stores
    version = _awaiting(ledger, registry, "r1")
    real = registry.client.set_registered_model_alias
    calls = []

    def flaky(*args):
        calls.append(args)
        if len(calls) == 1:
            raise ConnectionError("connection reset by peer")
        return real(*args)

    monkeypatch.setattr(registry.client, "set_registered_model_alias", flaky)
    monkeypatch.setattr("registry.retries.random.random", lambda: 0.0)
    monkeypatch.setattr("registry.retries.time.sleep", lambda seconds: None)
    assert approve(ledger, registry, "r1", approver="bob", approvers=APPROVERS) == version
    assert len(calls) == 2 and registry.alias_version(PRODUCTION) == version
