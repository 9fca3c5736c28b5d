"""Revocations as rows of their own table (registry/ledger_db.py `lethe_revocations`).

A revocation removes one promoted request's effect from a lineage: the requests promoted after it are
replayed, in order, from the last version before it (registry/ledger.py `Ledger.revoke`; the re-derivation
is pipeline/revoke.py). These helpers read and write the table on a connection the ledger holds, so a
revocation is created, checked and queued inside the ledger's one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update

from registry.ledger_db import revocations_table
from registry.requests import Request, RequestSpec

PENDING, COMPLETED, FAILED = "pending", "completed", "failed"


@dataclass(frozen=True)
class Revocation:
    """A pending or finished revocation: which request, who, why, and the chain that re-derives the rest."""

    id: str
    request_id: str  # the revoked request
    approver: str
    reason: str
    parent_version: int | None  # the last version before the revoked request: the chain starts here
    production_before: int | None  # production when the revocation was asked (the head's promotion checks it)
    replays: tuple[str, ...]  # the replay requests, in order; the last is the head
    state: str  # PENDING, COMPLETED or FAILED
    lineage: str = ""

    @classmethod
    def from_row(cls, row) -> Revocation:
        return cls(
            id=row["id"],
            request_id=row["request_id"],
            approver=row["approver"],
            reason=row["reason"],
            parent_version=row["parent_version"],
            production_before=row["production_before"],
            replays=tuple(row["replays"]),
            state=row["state"],
            lineage=row["lineage"],
        )


def insert_pending(conn, revocation: Revocation, *, now: datetime) -> None:
    """Insert a pending revocation. The table's unique `pending_lineage` refuses a second pending one in the
    same lineage (an IntegrityError), whatever checks the caller made."""
    conn.execute(
        insert(revocations_table).values(
            id=revocation.id,
            request_id=revocation.request_id,
            lineage=revocation.lineage,
            pending_lineage=revocation.lineage,
            approver=revocation.approver,
            reason=revocation.reason,
            parent_version=revocation.parent_version,
            production_before=revocation.production_before,
            replays=list(revocation.replays),
            state=PENDING,
            created_at=now,
            updated_at=now,
        )
    )


def get(conn, revocation_id: str) -> Revocation | None:
    row = conn.execute(select(revocations_table).where(revocations_table.c.id == revocation_id)).mappings().first()
    return None if row is None else Revocation.from_row(row)


def pending_in(conn, lineage: str) -> Revocation | None:
    query = select(revocations_table).where(revocations_table.c.pending_lineage == lineage)
    row = conn.execute(query).mappings().first()
    return None if row is None else Revocation.from_row(row)


def of_lineage(conn, lineage: str) -> list[Revocation]:
    """Every revocation of a lineage, oldest first."""
    query = (
        select(revocations_table)
        .where(revocations_table.c.lineage == lineage)
        .order_by(revocations_table.c.created_at, revocations_table.c.id)
    )
    return [Revocation.from_row(row) for row in conn.execute(query).mappings()]


def end(conn, revocation_id: str, state: str, *, now: datetime) -> bool:
    """Pending → `state` (COMPLETED or FAILED), a compare-and-set: False when it was not pending (another
    caller ended it first). Frees the lineage's pending slot."""
    changed = conn.execute(
        update(revocations_table)
        .where(revocations_table.c.id == revocation_id, revocations_table.c.state == PENDING)
        .values(state=state, pending_lineage=None, updated_at=now)
    ).rowcount
    return changed == 1


def replay_of(request: Request, revocation_id: str) -> RequestSpec:
    """A replay of a promoted request in a revocation's chain: the same ask, linked to the one it replays."""
    return RequestSpec(
        **{f: getattr(request, f) for f in ("concept", "requester", "synonyms", "anchor", "preserve", "method")},
        options=request.options,
        reason=request.reason,
        id=f"{request.id[:40]}-replay-{revocation_id[-6:]}",
        replays=request.id,
        revocation=revocation_id,
    )
