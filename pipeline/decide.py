"""Decide: the gate's outcome in the ledger, and the answer to a candidate (promote or reject).

A failed gate ends the request `rejected` (actor "gate") and never moves `production`. A passed gate
leaves it `awaiting-approval` until a person on the approvers list answers (`lethe approve`/`reject`,
or the Prefect UI form), or, in the embedded demo, the auto-approval policy — a named policy, recorded
in the audit trail and on the version as such, never a pretend approver.
"""

from __future__ import annotations

from pipeline.claim import registry_for
from pipeline.settings import LetheSettings
from pipeline.values import Answer, Outcome, Parent
from registry import governance
from registry.ledger import AWAITING_APPROVAL, FAILED, PROMOTED, REJECTED, RUNNING, Ledger, StateConflict

AUTO_APPROVAL_POLICY = "auto-approve-passing-gate"


def auto_approval() -> Answer:
    return Answer(
        approve=True,
        approver=AUTO_APPROVAL_POLICY,
        comment="candidate passed its gate (auto-approval policy)",
        policy=AUTO_APPROVAL_POLICY,
    )


def record_gate(
    settings: LetheSettings,
    request_id: str,
    parent: Parent,
    outcome: Outcome,
    version: int,
    *,
    waiting: dict | None = None,
) -> str:
    """Write the gate's outcome: `rejected` with its reasons, or `awaiting-approval` (with where the run
    that waits is, so `lethe approve` can answer it). Returns the new state."""
    ledger = Ledger(settings.ledger_url)
    if not outcome.gate_passed:
        error = "gate failed: " + "; ".join(outcome.gate_reasons)
        ledger.transition(
            request_id, REJECTED, actor="gate", candidate_version=version, parent_version=parent.version, error=error
        )
        _end_chain(ledger, request_id, actor="gate", reason=error)
        return REJECTED
    ledger.transition(
        request_id,
        AWAITING_APPROVAL,
        actor="flow",
        candidate_version=version,
        parent_version=parent.version,
        detail=waiting or {},
    )
    return AWAITING_APPROVAL


def apply_answer(settings: LetheSettings, request_id: str, answer: Answer) -> dict:
    """Apply an answer under the governance rules (registry/governance.py); returns the new state."""
    ledger, registry = Ledger(settings.ledger_url), registry_for(settings)
    if answer.approve:
        production = governance.approve(
            ledger,
            registry,
            request_id,
            approver=answer.approver,
            approvers=settings.approvers,
            comment=answer.comment,
            policy=answer.policy,
        )
        request = ledger.get(request_id)
        result = {"state": request.state, "production_version": production}
        if request.revocation and request.state == PROMOTED:  # the re-derived head: the revocation took effect
            result["revocation_completed"] = request.revocation  # measured by its own task (pipeline/revoke.py)
        return result
    governance.reject(
        ledger,
        registry,
        request_id,
        approver=answer.approver,
        approvers=settings.approvers,
        reason=answer.comment or "rejected",
    )
    _end_chain(ledger, request_id, actor=answer.approver, reason=f"{request_id} was rejected")
    return {"state": REJECTED}


def _end_chain(ledger: Ledger, request_id: str, *, actor: str, reason: str) -> None:
    """A revocation's replay that ends without a version to build on ends its chain: nothing is revoked."""
    request = ledger.get(request_id)
    if request.revocation and ledger.revocation(request.revocation).state == "pending":
        ledger.fail_revocation(request.revocation, actor=actor, reason=reason)


def failure_message(step: str, error: BaseException) -> str:
    return f"{step} failed: {type(error).__name__}: {error}"


def record_failure(settings: LetheSettings, request_id: str, *, error: str, actor: str) -> bool:
    """Mark a request that is still `running` failed, with a message a person can act on; True if it was.

    A request already decided (rejected, awaiting approval, ...) keeps its state: its outcome was recorded.
    """
    message = (
        f"{error}. Nothing was promoted; the request's files are in {settings.home / 'requests' / request_id}; "
        "fix the cause and submit the request again (a new id)"
    )
    ledger = Ledger(settings.ledger_url)
    try:
        ledger.transition(request_id, FAILED, actor=actor, expected=RUNNING, error=message)
    except StateConflict:
        return False
    _end_chain(ledger, request_id, actor=actor, reason=f"{request_id} failed: {error}")
    return True
