"""Human approval, rejection and rollback: who may, and what each changes (ledger + registry).

Rules (DESIGN.md, "Orchestration"; the registry issue, "Governance"):
- approve and reject need an approver on the configured list who is not the request's requester;
- a request can be approved only while awaiting approval, and only if `production` still points at
  the version its candidate was built on (compare before set);
- a rejected or gate-failed version is never promoted;
- rollback needs an approver and is recorded in the ledger's audit trail;
- a named auto-approval policy (the embedded demo's `--auto-approve`) may approve a candidate whose gate
  passed; it is no person, so it is not on the approvers list, and the ledger and the version's
  approval tag record the policy's name as such.
"""

from __future__ import annotations

from datetime import UTC, datetime

from registry.ledger import AWAITING_APPROVAL, PROMOTED, REJECTED, Ledger, LedgerError, StateConflict
from registry.versions import ModelRegistry, PromotionRefused


class NotAllowed(LedgerError):
    """The actor may not do this (not an approver, or approving their own request)."""


def check_approver(approver: str, approvers: list[str], requester: str | None = None) -> str:
    """Raises NotAllowed unless `approver` is on the list and is not the requester."""
    approver = (approver or "").strip()
    if not approver:
        raise NotAllowed("an approver name is required")
    if approver not in approvers:
        listed = ", ".join(approvers) if approvers else "nobody (set LETHE_APPROVERS)"
        raise NotAllowed(f"{approver!r} is not an approver; approvers: {listed}")
    if requester is not None and approver == requester:
        raise NotAllowed(f"{approver!r} submitted this request and cannot approve or reject it")
    return approver


def _stamp(approver: str, comment: str, policy: str | None = None) -> dict:
    return {
        "by": approver,
        "at": datetime.now(UTC).isoformat(),
        "comment": comment,
        **({"policy": policy} if policy else {}),
    }


def approve(
    ledger: Ledger,
    registry: ModelRegistry,
    request_id: str,
    *,
    approver: str,
    approvers: list[str],
    comment: str = "",
    policy: str | None = None,
) -> int:
    """Promote the request's candidate to production. Returns the version now in production.

    `policy`: the name of the auto-approval policy that approves instead of a person (`approver` is then
    that name, not checked against `approvers`, and recorded as a policy).

    Raises:
        NotAllowed, StateConflict (not awaiting approval), PromotionRefused (production moved, or the
        candidate failed its gate — the request is then rejected with that reason).
    """
    request = ledger.get(request_id)
    if policy is None:
        check_approver(approver, approvers, request.requester)
    if request.state != AWAITING_APPROVAL or request.candidate_version is None:
        raise StateConflict(f"{request_id} is {request.state}; only a request awaiting approval can be approved")
    stamp = _stamp(approver, comment, policy)
    try:
        registry.promote(request.candidate_version, expected_production=request.parent_version, approval=stamp)
    except PromotionRefused as refusal:
        ledger.transition(
            request_id,
            REJECTED,
            actor=approver,
            expected=AWAITING_APPROVAL,
            error=str(refusal),
            detail={"reason": str(refusal)},
        )
        raise
    ledger.transition(
        request_id,
        PROMOTED,
        actor=approver,
        expected=AWAITING_APPROVAL,
        detail={"version": request.candidate_version, "comment": comment, **({"policy": policy} if policy else {})},
    )
    return request.candidate_version


def reject(
    ledger: Ledger, registry: ModelRegistry, request_id: str, *, approver: str, approvers: list[str], reason: str
) -> None:
    request = ledger.get(request_id)
    check_approver(approver, approvers, request.requester)
    if not reason.strip():
        raise NotAllowed("a rejection needs a reason")
    ledger.transition(
        request_id, REJECTED, actor=approver, expected=AWAITING_APPROVAL, error=reason, detail={"reason": reason}
    )
    if request.candidate_version is not None:
        registry.mark_rejected(request.candidate_version, _stamp(approver, reason))


def rollback(
    ledger: Ledger, registry: ModelRegistry, *, to_version: int, approver: str, approvers: list[str], reason: str = ""
) -> int | None:
    """Point production back at an earlier approved version; audited. Returns the previous production."""
    check_approver(approver, approvers)
    previous = registry.rollback(to_version)
    ledger.record_event(
        "rollback", actor=approver, detail={"from_version": previous, "to_version": to_version, "reason": reason}
    )
    return previous
