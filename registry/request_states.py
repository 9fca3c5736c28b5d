"""A request's states, which may follow which, and the ledger's refusals (registry/ledger.py writes them).

The life of a request (docs/design.md, "The flow of one request"): queued → running → awaiting-approval →
promoting → promoted, or rejected / failed / cancelled on the way; a revocation's replays end accepted,
and the requests it re-derives revoked or superseded.
"""

from __future__ import annotations

QUEUED, RUNNING, AWAITING_APPROVAL = "queued", "running", "awaiting-approval"
PROMOTED, REJECTED, FAILED, CANCELLED = "promoted", "rejected", "failed", "cancelled"
# An approval is written here first, then `production` moves in MLflow, then the request is `promoted`
# (registry/governance.py): the ledger decides, the alias follows. A rejection can no longer slip in
# between (it needs `awaiting-approval`), and a crash between the two writes leaves `promoting`, which the
# next drain finishes (governance.finish_promotions) before it claims anything.
PROMOTING = "promoting"
# A revocation's replays: an approved replay that is not the chain's head is `accepted` (the next one
# builds on it; production moves only with the head). When the head is promoted, the revoked request
# becomes `revoked` and every request it replayed `superseded`.
ACCEPTED, REVOKED, SUPERSEDED = "accepted", "revoked", "superseded"
STATES = (
    QUEUED,
    RUNNING,
    AWAITING_APPROVAL,
    PROMOTING,
    PROMOTED,
    REJECTED,
    FAILED,
    CANCELLED,
    ACCEPTED,
    REVOKED,
    SUPERSEDED,
)
ACTIVE_STATES = (QUEUED, RUNNING, AWAITING_APPROVAL, PROMOTING)  # a request in these still has work ahead
ERASED_STATES = (PROMOTED, ACCEPTED)  # its concept is erased (or will be with its chain's head)
# Which state may follow which. A rejected, failed or cancelled request is never reopened (a new request
# is submitted instead, so history stays linear); a promoted one only leaves production's lineage by a
# revocation.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    QUEUED: (RUNNING, CANCELLED),
    RUNNING: (AWAITING_APPROVAL, REJECTED, FAILED),
    AWAITING_APPROVAL: (PROMOTING, REJECTED, ACCEPTED),
    PROMOTING: (PROMOTED, REJECTED),  # rejected: production moved meanwhile (the promotion was refused)
    PROMOTED: (REVOKED, SUPERSEDED),
    ACCEPTED: (),
    REJECTED: (),
    FAILED: (),
    CANCELLED: (),
    REVOKED: (),
    SUPERSEDED: (),
}
REVOCATION_REQUESTED, REVOCATION_COMPLETED, REVOCATION_FAILED = (
    "revocation-requested",
    "revocation-completed",
    "revocation-failed",
)

# A request whose run stopped while it was running (a crash, a kill) is resumed this many times at
# most; the next time it is marked failed, so one that kills its worker every time cannot hold the queue.
MAX_RESUMES = 3


class LedgerError(Exception):
    """Base of every refusal by the ledger; nothing was written when one is raised."""


class DuplicateRequest(LedgerError):
    """A request with this id exists already."""


class ConflictingRequest(LedgerError):
    """The request conflicts with the ledger (e.g. the concept is already queued or erased)."""


class UnknownRequest(LedgerError):
    """No request has this id."""


class RevocationRefused(LedgerError):
    """A revocation that cannot be queued (never promoted, one pending already, work in the queue)."""


class StateConflict(LedgerError):
    """The request is not in a state from which this change is allowed (or it changed meanwhile)."""
