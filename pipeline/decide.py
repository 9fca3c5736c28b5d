"""Decide: the gate's outcome in the ledger, and the answer to a candidate (promote or reject).

A failed gate ends the request `rejected` (actor "gate") and never moves `production`. A passed gate
leaves it `awaiting-approval` until a person on the approvers list answers (`lethe approve`/`reject`,
or the Prefect UI form), or, in the embedded demo, the auto-approval policy — a named policy, recorded
in the audit trail and on the version as such, never a pretend approver.
"""

from __future__ import annotations

from pipeline.claim import registry_for
from pipeline.settings import LetheSettings
from pipeline.values import Decision, Outcome, Parent
from registry import governance
from registry.ledger import AWAITING_APPROVAL, FAILED, PROMOTED, REJECTED, RUNNING, Ledger, StateConflict

AUTO_APPROVAL_POLICY = "auto-approve-passing-gate"


def auto_approval() -> Decision:
    return Decision(
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
        ledger.transition(
            request_id,
            REJECTED,
            actor="gate",
            candidate_version=version,
            parent_version=parent.version,
            error="gate failed: " + "; ".join(outcome.gate_reasons),
        )
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


def decide(settings: LetheSettings, request_id: str, decision: Decision) -> dict:
    """Apply an answer under the governance rules (registry/governance.py); returns the new state."""
    ledger, registry = Ledger(settings.ledger_url), registry_for(settings)
    if decision.approve:
        version = governance.approve(
            ledger,
            registry,
            request_id,
            approver=decision.approver,
            approvers=settings.approvers,
            comment=decision.comment,
            policy=decision.policy,
        )
        return {"state": PROMOTED, "production_version": version}
    governance.reject(
        ledger,
        registry,
        request_id,
        approver=decision.approver,
        approvers=settings.approvers,
        reason=decision.comment or "rejected",
    )
    return {"state": REJECTED}


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
    try:
        Ledger(settings.ledger_url).transition(request_id, FAILED, actor=actor, expected=RUNNING, error=message)
    except StateConflict:
        return False
    return True
