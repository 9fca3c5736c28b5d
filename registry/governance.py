"""Human approval, rejection and rollback: who may, and what each changes (ledger + registry).

Rules (docs/design.md, "Orchestration" and "Registry and ledger"):
- approve and reject need an approver on the configured list who is not the request's requester;
- a request can be approved only while awaiting approval, and only if `production` still points at
  the version its candidate was built on (compare before set);
- a rejected or gate-failed version is never promoted;
- the ledger is the system of record, so it is written first and the MLflow alias second wherever a
  decision moves an alias: a decision the ledger refused never moves `production`, and one the ledger
  took but the alias missed (a crash, MLflow down) is finished on resume (`finish_promotions`);
- rollback needs an approver and is recorded in the ledger's audit trail;
- a named auto-approval policy (the embedded demo's `--auto-approve`) may approve a candidate whose gate
  passed; it is no person, so it is not on the approvers list, and the ledger and the version's
  approval tag record the policy's name as such.
"""

from __future__ import annotations

from datetime import UTC, datetime

from registry.ledger import (
    ACCEPTED,
    AWAITING_APPROVAL,
    PROMOTED,
    PROMOTING,
    REJECTED,
    Ledger,
    LedgerError,
    StateConflict,
)
from registry.versions import PRODUCTION, ModelRegistry, PromotionRefused


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

    The ledger decides first, the alias follows: `awaiting-approval` → `promoting` (a compare-and-set, so
    a concurrent `reject` either wins before it, and nothing moves, or is refused after it), then the
    `production` alias moves, then `promoting` → `promoted`. A crash between leaves `promoting`, which
    `finish_promotions` completes on the next drain (or on approving again).

    `policy`: the name of the auto-approval policy that approves instead of a person (`approver` is then
    that name, not checked against `approvers`, and recorded as a policy).

    Raises:
        NotAllowed, StateConflict (not awaiting approval, or answered meanwhile), PromotionRefused
        (production moved, or the candidate failed its gate — the request is then rejected with that reason).
    """
    request = ledger.get(request_id)
    if policy is None:
        check_approver(approver, approvers, request.requester)
    if request.state == PROMOTING:  # approved already; its alias move was interrupted: finish it
        return _complete_promotion(ledger, registry, request_id, actor=approver)
    if request.state != AWAITING_APPROVAL or request.candidate_version is None:
        raise StateConflict(f"{request_id} is {request.state}; only a request awaiting approval can be approved")
    revocation = ledger.revocation(request.revocation) if request.revocation else None
    if revocation is not None and request.id != revocation.replays[-1]:
        # a replay before the chain's head: accepted, the next replay builds on it; production stays
        ledger.transition(
            request_id,
            ACCEPTED,
            actor=approver,
            expected=AWAITING_APPROVAL,
            detail={"version": request.candidate_version, "comment": comment, "revocation": revocation.id},
        )
        registry.accept(request.candidate_version, approval=_stamp(approver, comment, policy))
        return registry.alias_version(PRODUCTION)
    expected = revocation.production_before if revocation is not None else request.parent_version
    ledger.transition(
        request_id,
        PROMOTING,
        actor=approver,
        expected=AWAITING_APPROVAL,
        detail={
            "version": request.candidate_version,
            "expected_production": expected,
            "approval": _stamp(approver, comment, policy),
        },
    )
    return _complete_promotion(ledger, registry, request_id, actor=approver)


def _complete_promotion(ledger: Ledger, registry: ModelRegistry, request_id: str, *, actor: str) -> int:
    """The second half of an approval whose ledger write is done (the request is `promoting`): move the
    alias (idempotent, retried), then record `promoted` — or `rejected` when production moved meanwhile.

    Raises:
        PromotionRefused: production moved since the candidate was built (the request is now rejected).
    """
    request = ledger.get(request_id)
    asked = next(h["detail"] for h in reversed(ledger.history(request_id)) if h["to_state"] == PROMOTING)
    approval = asked["approval"]
    try:
        registry.promote(request.candidate_version, expected_production=asked["expected_production"], approval=approval)
    except PromotionRefused as refusal:
        ledger.transition(
            request_id,
            REJECTED,
            actor=actor,
            expected=PROMOTING,
            error=str(refusal),
            detail={"reason": str(refusal)},
        )
        raise
    ledger.transition(
        request_id,
        PROMOTED,
        actor=actor,
        expected=PROMOTING,
        detail={
            "version": request.candidate_version,
            "comment": approval["comment"],
            **({"policy": approval["policy"]} if approval.get("policy") else {}),
        },
    )
    if request.revocation:  # the re-derived head is in production: the revocation took effect
        revocation = ledger.revocation(request.revocation)
        _finish_revocation(ledger, registry, revocation, actor=actor, head_version=request.candidate_version)
    return request.candidate_version


def finish_promotions(ledger: Ledger, registry: ModelRegistry, lineage: str, *, actor: str) -> list[str]:
    """Reconcile on resume: complete every promotion of `lineage` that a crash left half-done (`promoting`:
    the approval is in the ledger, the alias may or may not have moved). Returns the request ids finished;
    one refused because production moved is rejected, as `approve` would have done.

    Raises whatever the registry raises when it is still unreachable (the request stays `promoting`).
    """
    finished = []
    for request in ledger.requests(lineage):
        if request.state != PROMOTING:
            continue
        try:
            _complete_promotion(ledger, registry, request.id, actor=actor)
        except (PromotionRefused, StateConflict):  # rejected, or another resumer finished it first
            pass
        finished.append(request.id)
    return finished


def interrupted(ledger: Ledger, lineage: str) -> bool:
    """Whether `finish_interrupted` has anything to do: a `promoting` request, or a pending revocation with
    nothing left to re-derive. Reads the ledger only, so a drain touches the registry for it only when needed."""
    if any(request.state == PROMOTING for request in ledger.requests(lineage)):
        return True
    pending = ledger.pending_revocation(lineage)
    return pending is not None and (not pending.replays or ledger.get(pending.replays[-1]).state == PROMOTED)


def finish_interrupted(ledger: Ledger, registry: ModelRegistry, lineage: str, *, actor: str) -> list[str]:
    """Reconcile on resume (the next drain, or the next revocation): finish what a crash left between the
    ledger's write and the registry's — promotions left `promoting` (`finish_promotions`), and a pending
    revocation with nothing left to re-derive: one with no replays whose alias move was cut short, or one
    whose chain's head is promoted but which was never marked completed. Returns what it finished (request
    and revocation ids). Idempotent, and safe beside a caller finishing the same thing (compare-and-set).
    """
    finished = finish_promotions(ledger, registry, lineage, actor=actor)
    pending = ledger.pending_revocation(lineage)
    if pending is None:
        return finished
    if not pending.replays:
        head_version = pending.parent_version
        registry.point_production(head_version)
    elif (head := ledger.get(pending.replays[-1])).state == PROMOTED:
        head_version = head.candidate_version
    else:  # its chain is still being re-derived: the drain goes on with it
        return finished
    try:
        _finish_revocation(ledger, registry, pending, actor=actor, head_version=head_version)
    except StateConflict:  # finished meanwhile by the caller that was interrupted, or another resumer
        pass
    return [*finished, pending.id]


def _finish_revocation(
    ledger: Ledger, registry: ModelRegistry, revocation, *, actor: str, head_version: int | None
) -> None:
    """Tag the revoked and superseded versions (idempotent), then end the revocation in the ledger (one
    transaction; StateConflict when another caller ended it first)."""
    revoked = ledger.get(revocation.request_id)
    if revoked.candidate_version is not None:
        registry.mark_revoked(revoked.candidate_version, revocation=revocation.id, reason=revocation.reason)
    for replay_id in revocation.replays:
        replay = ledger.get(replay_id)
        replayed = ledger.get(replay.replays)
        if replayed.candidate_version is not None:
            registry.mark_superseded(replayed.candidate_version, by=replay.candidate_version, revocation=revocation.id)
    ledger.finish_revocation(revocation.id, actor=actor, detail={"production_version": head_version})


def revoke(
    ledger: Ledger, registry: ModelRegistry, request_id: str, *, approver: str, approvers: list[str], reason: str
) -> dict:
    """Revoke a promoted request: recorded in the ledger (audited) and its re-derivation queued — every later
    promoted request replayed in order from the last version before it (registry/ledger.py `Ledger.revoke`,
    one transaction). With nothing to replay, production goes straight back to that version, after the
    ledger's write (a crash between them is finished on resume: `finish_interrupted`). Returns what was done.

    Raises:
        NotAllowed (not an approver, the revoked request's own requester, no reason), UnknownRequest,
        RevocationRefused (never promoted, one pending, requests in flight).
    """
    request = ledger.get(request_id)
    check_approver(approver, approvers, request.requester)
    if not reason.strip():
        raise NotAllowed("a revocation needs a reason")
    finish_interrupted(ledger, registry, request.lineage, actor=approver)  # an earlier one cut short
    production = registry.alias_version(PRODUCTION)
    revocation = ledger.revoke(request_id, approver=approver, reason=reason, production_version=production)
    if not revocation.replays:  # it was the last erasure: production goes back to the version before it
        registry.point_production(revocation.parent_version)
        try:
            _finish_revocation(ledger, registry, revocation, actor=approver, head_version=revocation.parent_version)
        except StateConflict:  # a drain's reconciliation finished it first
            pass
    return {
        "revocation": revocation.id,
        "revoked": request_id,
        "replays": list(revocation.replays),
        "parent_version": revocation.parent_version,
        "production_version": registry.alias_version(PRODUCTION),
    }


def reject(
    ledger: Ledger, registry: ModelRegistry, request_id: str, *, approver: str, approvers: list[str], reason: str
) -> None:
    """Reject a candidate awaiting approval: the ledger first (a compare-and-set that an approval already
    under way makes fail), then the version's tag, so `promote` refuses it for good.

    Raises:
        NotAllowed, StateConflict (not awaiting approval: decided, or being promoted).
    """
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
