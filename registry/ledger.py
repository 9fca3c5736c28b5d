"""The request ledger: the system of record for unlearning requests (docs/design.md, "Registry and ledger").

Requests, their audit trail and revocations live in three tables (registry/ledger_db.py). Every state
change is a compare-and-set on the current state inside one transaction, so two workers can never both
claim, promote or reject the same request, and a claim never skips the head of the queue. A change that
reads several rows before writing (a claim, a revocation) makes its checks inside the transaction that
writes, and the database serialises those transactions (ledger_db.make_engine).
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from registry import revocations
from registry.ledger_db import READ_ONLY, audit_table, create_schema, make_engine, requests_table
from registry.request_states import (  # noqa: F401 - re-exported: `from registry.ledger import PROMOTED`
    ACCEPTED,
    ACTIVE_STATES,
    AWAITING_APPROVAL,
    CANCELLED,
    ERASED_STATES,
    FAILED,
    MAX_RESUMES,
    PROMOTED,
    PROMOTING,
    QUEUED,
    REJECTED,
    REVOCATION_COMPLETED,
    REVOCATION_FAILED,
    REVOCATION_REQUESTED,
    REVOKED,
    RUNNING,
    STATES,
    SUPERSEDED,
    TRANSITIONS,
    ConflictingRequest,
    DuplicateRequest,
    LedgerError,
    RevocationRefused,
    StateConflict,
    UnknownRequest,
)
from registry.requests import InvalidRequest, Request, RequestSpec
from registry.revocations import Revocation

__all__ = ["InvalidRequest", "Ledger", "Request", "RequestSpec", "Revocation"]


def _now() -> datetime:
    return datetime.now(UTC)


def _new_request_id(concept: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", concept.lower()).strip("-")[:24] or "request"
    return f"{slug}-{time.time_ns():x}"


class Ledger:
    """The ledger of one database. All methods are safe to call from concurrent processes."""

    def __init__(self, url: str, *, echo: bool = False):
        self.url = url
        self.engine: Engine = make_engine(url, echo=echo)
        create_schema(self.engine)

    # ---------------------------------------------------------------- writes
    def submit(self, spec: RequestSpec, *, lineage: str) -> Request:
        """Queue one request at the tail (see `submit_many`)."""
        return self.submit_many([spec], lineage=lineage)[0]

    def submit_many(self, specs: list[RequestSpec], *, lineage: str) -> list[Request]:
        """Queue requests at the tail, in order, all or nothing.

        Raises:
            InvalidRequest: a request is malformed (every problem of every request is named).
            DuplicateRequest: an id exists already, or appears twice among `specs`.
            ConflictingRequest: a concept is already active or erased in this lineage, or asked twice.
            Nothing is written when any of these is raised.
        """
        problems = []
        for i, spec in enumerate(specs):
            if spec_problems := spec.problems():
                problems.append(f"request {i + 1}: " * (len(specs) > 1) + "; ".join(spec_problems))
        if problems:
            raise InvalidRequest("; ".join(problems))
        ids = [spec.id or _new_request_id(spec.concept) + f"-{i}" * (len(specs) > 1) for i, spec in enumerate(specs)]
        if len(set(ids)) != len(ids):
            raise DuplicateRequest("the same request id appears twice in one submission")
        concepts = [spec.concept for spec in specs]
        if len(set(concepts)) != len(concepts):
            raise ConflictingRequest("the same concept appears twice in one submission")
        try:
            with self._transaction() as conn:
                if not all(spec.replays for spec in specs) and (chain := self._re_deriving(conn, lineage)):
                    raise ConflictingRequest(
                        f"revocation {chain.id} of {chain.request_id} is being re-derived in lineage "
                        f"{lineage!r}; submit again once it is decided"
                    )
                self._insert_queued(conn, list(zip(ids, specs)), lineage=lineage)
        except IntegrityError:
            raise DuplicateRequest("a request id exists already (submitted concurrently)") from None
        return [self.get(request_id) for request_id in ids]

    def _insert_queued(self, conn, requests: list[tuple[str, RequestSpec]], *, lineage: str) -> None:
        """Insert requests at the tail of the queue, each audited; raises DuplicateRequest or
        ConflictingRequest (the caller's transaction then writes nothing)."""
        now = _now()
        for request_id, spec in requests:
            if conn.execute(select(requests_table.c.id).where(requests_table.c.id == request_id)).first():
                raise DuplicateRequest(f"a request with id {request_id!r} exists already")
            clash = conn.execute(
                select(requests_table.c.id, requests_table.c.state).where(
                    requests_table.c.lineage == lineage,
                    requests_table.c.state.in_((*ACTIVE_STATES, *ERASED_STATES)),
                    requests_table.c.concept == spec.concept,
                )
            ).first()
            if clash and not spec.replays:  # a replay re-derives a concept that is erased on purpose
                verb = "was erased by" if clash.state in ERASED_STATES else "is already requested as"
                raise ConflictingRequest(
                    f"concept {spec.concept!r} {verb} {clash.id} ({clash.state}) in lineage {lineage!r}"
                )
            seq = conn.execute(
                insert(requests_table).values(
                    id=request_id,
                    lineage=lineage,
                    concept=spec.concept,
                    requester=spec.requester,
                    body=spec.body(),
                    state=QUEUED,
                    created_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]
            self._audit(conn, request_id, None, QUEUED, spec.requester, {"seq": seq})

    def claim_head(self, lineage: str, *, actor: str) -> Request | None:
        """Atomically move the oldest queued request of a lineage to `running` and return it.

        Strict FIFO, one request per lineage at a time: nothing is claimed while another request of
        the lineage is running or awaiting approval (its outcome decides the next one's parent).
        Returns None when there is nothing to claim.
        """
        with self._transaction() as conn:
            busy = conn.execute(
                select(requests_table.c.id).where(
                    requests_table.c.lineage == lineage,
                    requests_table.c.state.in_((RUNNING, AWAITING_APPROVAL, PROMOTING)),
                )
            ).first()
            if busy:
                return None
            head = conn.execute(
                select(requests_table.c.id)
                .where(requests_table.c.lineage == lineage, requests_table.c.state == QUEUED)
                .order_by(requests_table.c.seq)
                .limit(1)
            ).first()
            if head is None:
                return None
            self._change_state(conn, head.id, QUEUED, RUNNING, actor, {})
        return self.get(head.id)

    def resume_stranded(self, lineage: str, *, actor: str, max_resumes: int = MAX_RESUMES) -> Request | None:
        """The request of a lineage that a stopped run left `running`, to be resumed by the caller.

        Only the holder of the lineage (one drainer per lineage: flows/concurrency.py) may call this:
        to it, a request still `running` belongs to a run that is gone. The resumption is audited as a
        "resumed" event. A request already resumed `max_resumes` times is marked failed with the reason
        instead, and None is returned (the queue goes on). None also when nothing is stranded.
        """
        with self._transaction() as conn:
            row = conn.execute(
                select(requests_table.c.id)
                .where(requests_table.c.lineage == lineage, requests_table.c.state == RUNNING)
                .order_by(requests_table.c.seq)
                .limit(1)
            ).first()
            if row is None:
                return None
            resumes = conn.execute(
                select(func.count())
                .select_from(audit_table)
                .where(audit_table.c.request_id == row.id, audit_table.c.event == "resumed")
            ).scalar_one()
            if resumes >= max_resumes:
                error = f"its run stopped while running {resumes + 1} times (killed or crashed); not resumed again"
                self._change_state(conn, row.id, RUNNING, FAILED, actor, {"reason": error}, error=error)
                return None
            self._audit(
                conn,
                row.id,
                RUNNING,
                RUNNING,
                actor,
                {"resume": resumes + 1, "reason": "the run that claimed it stopped while it was running"},
                event="resumed",
            )
        return self.get(row.id)

    def transition(
        self, request_id: str, to_state: str, *, actor: str, expected: str | None = None, **fields
    ) -> Request:
        """Move a request to `to_state` if TRANSITIONS allow it (and it is in `expected`, if given).

        `fields` may set parent_version, candidate_version and error; everything is audited.

        Raises:
            UnknownRequest, StateConflict
        """
        allowed_fields = {"parent_version", "candidate_version", "error", "detail"}
        if unknown := set(fields) - allowed_fields:
            raise ValueError(f"cannot set {sorted(unknown)} through a transition")
        detail = fields.pop("detail", {})
        with self._transaction() as conn:
            current = self._state_of(conn, request_id)
            if expected is not None and current != expected:
                raise StateConflict(f"{request_id} is {current}, not {expected}")
            self._change_state(conn, request_id, current, to_state, actor, {**detail, **fields}, **fields)
        return self.get(request_id)

    def record_event(self, event: str, *, actor: str, detail: dict, request_id: str | None = None) -> None:
        """Audit something that is not a request's state change (a rollback of production; a measurement
        of a request, filed under its id)."""
        with self._transaction() as conn:
            self._audit(conn, request_id, None, None, actor, detail, event=event)

    def revoke(self, request_id: str, *, approver: str, reason: str, production_version: int | None) -> Revocation:
        """Record a revocation of a promoted request and queue its re-derivation: every request promoted after
        it in the lineage is replayed, in order, as a new request (same concept, synonyms, preserve set,
        method and options) linked to the one it replays. The checks, the revocation's row, its audit event
        and the replays are one transaction: a crash leaves all of it or none, and of two concurrent
        revocations exactly one is recorded. The approver rules are the caller's (registry/governance.py).

        Raises:
            UnknownRequest; RevocationRefused: the request was never promoted (or was revoked already), a
            revocation is pending in the lineage, or requests of the lineage are still queued or in flight.
        """
        revocation_id = f"rev-{time.time_ns():x}"
        try:
            with self._transaction() as conn:
                target = self._get(conn, request_id)
                if target.state != PROMOTED:
                    raise RevocationRefused(f"{request_id} is {target.state}: only a promoted request can be revoked")
                if (pending := revocations.pending_in(conn, target.lineage)) is not None:
                    raise RevocationRefused(
                        f"revocation {pending.id} of {pending.request_id} is pending in lineage {target.lineage!r}"
                    )
                lineage = self._requests(conn, target.lineage)
                if busy := [r.id for r in lineage if r.state in ACTIVE_STATES]:
                    raise RevocationRefused(
                        f"requests of lineage {target.lineage!r} are in the queue ({', '.join(busy)}); "
                        "let them finish (or reject them) first"
                    )
                replays = [
                    revocations.replay_of(r, revocation_id)
                    for r in lineage
                    if r.seq > target.seq and r.state == PROMOTED
                ]
                revocation = Revocation(
                    revocation_id,
                    request_id,
                    approver,
                    reason,
                    target.parent_version,
                    production_version,
                    tuple(spec.id for spec in replays),
                    revocations.PENDING,
                    target.lineage,
                )
                revocations.insert_pending(conn, revocation, now=_now())
                detail = {
                    "revocation": revocation_id,
                    "approver": approver,
                    "reason": reason,
                    "parent_version": target.parent_version,
                    "production_before": production_version,
                    "replays": list(revocation.replays),
                }
                self._audit(conn, request_id, PROMOTED, PROMOTED, approver, detail, event=REVOCATION_REQUESTED)
                self._insert_queued(conn, [(spec.id, spec) for spec in replays], lineage=target.lineage)
        except IntegrityError:  # the database's own guard: another revocation became pending meanwhile
            raise RevocationRefused(f"another revocation is pending in the lineage of {request_id}") from None
        return revocation

    def revocation(self, revocation_id: str) -> Revocation:
        """Raises UnknownRequest when no revocation has this id."""
        with self._reading() as conn:
            found = revocations.get(conn, revocation_id)
        if found is None:
            raise UnknownRequest(f"no revocation with id {revocation_id!r}")
        return found

    def pending_revocation(self, lineage: str) -> Revocation | None:
        with self._reading() as conn:
            return revocations.pending_in(conn, lineage)

    def lineage_revocations(self, lineage: str) -> list[Revocation]:
        """Every revocation of a lineage, oldest first."""
        with self._reading() as conn:
            return revocations.of_lineage(conn, lineage)

    def _re_deriving(self, conn, lineage: str) -> Revocation | None:
        """The pending revocation of `lineage` while its replays are still in the queue or in flight (new
        requests wait for the chain: they must build on its head). A pending one with nothing left in flight
        (no replays, or its head promoted) is only waiting to be finished on resume: it blocks nothing."""
        pending = revocations.pending_in(conn, lineage)
        if pending is None or not pending.replays:
            return None
        states = conn.execute(select(requests_table.c.state).where(requests_table.c.id.in_(pending.replays))).scalars()
        return pending if any(state in ACTIVE_STATES for state in states) else None

    def finish_revocation(self, revocation_id: str, *, actor: str, detail: dict) -> None:
        """The chain's head was promoted (or, with nothing to replay, production went back): the revoked
        request becomes `revoked`, those it replayed `superseded`, the revocation `completed`; one transaction.

        Raises:
            StateConflict: the revocation is not pending (finished meanwhile by another caller).
        """
        with self._transaction() as conn:
            revocation = revocations.get(conn, revocation_id)
            if revocation is None or not revocations.end(conn, revocation_id, revocations.COMPLETED, now=_now()):
                raise StateConflict(f"revocation {revocation_id} is not pending")
            self._change_state(
                conn,
                revocation.request_id,
                PROMOTED,
                REVOKED,
                actor,
                {"revocation": revocation_id, "reason": revocation.reason},
            )
            for replay_id in revocation.replays:
                original = self._get(conn, replay_id).replays
                self._change_state(
                    conn, original, PROMOTED, SUPERSEDED, actor, {"revocation": revocation_id, "by": replay_id}
                )
            completed = {"revocation": revocation_id, **detail}
            self._audit(conn, revocation.request_id, None, None, actor, completed, event=REVOCATION_COMPLETED)

    def fail_revocation(self, revocation_id: str, *, actor: str, reason: str) -> None:
        """A replay was rejected or failed: the replays still queued are cancelled; nothing was revoked.
        A revocation no longer pending is left as it is."""
        with self._transaction() as conn:
            revocation = revocations.get(conn, revocation_id)
            if revocation is None or not revocations.end(conn, revocation_id, revocations.FAILED, now=_now()):
                return
            for replay_id in revocation.replays:
                if self._state_of(conn, replay_id) == QUEUED:
                    self._change_state(conn, replay_id, QUEUED, CANCELLED, actor, {"reason": reason}, error=reason)
            failed = {"revocation": revocation_id, "reason": reason}
            self._audit(conn, revocation.request_id, None, None, actor, failed, event=REVOCATION_FAILED)

    # ---------------------------------------------------------------- reads
    def get(self, request_id: str) -> Request:
        with self._reading() as conn:
            return self._get(conn, request_id)

    def requests(self, lineage: str | None = None) -> list[Request]:
        with self._reading() as conn:
            return self._requests(conn, lineage)

    def history(self, request_id: str | None = None) -> list[dict]:
        query = select(audit_table).order_by(audit_table.c.id)
        if request_id is not None:
            query = query.where(audit_table.c.request_id == request_id)
        with self._reading() as conn:
            return [{**row, "at": row["at"].isoformat()} for row in conn.execute(query).mappings()]

    def erased_concepts(self, lineage: str) -> list[str]:
        """Concepts of promoted requests, in the order they were queued."""
        return [r.concept for r in self.requests(lineage) if r.state in ERASED_STATES]

    # ---------------------------------------------------------------- internals
    def _transaction(self):
        """A writing transaction: serialised with every other writer (ledger_db.make_engine)."""
        return self.engine.begin()

    def _reading(self):
        """A connection for reads: no write lock, so `lethe status` and the approval poll never queue
        behind (or hold up) a claim or a decision."""
        return self.engine.connect().execution_options(**{READ_ONLY: True})

    @staticmethod
    def _get(conn, request_id: str) -> Request:
        row = conn.execute(select(requests_table).where(requests_table.c.id == request_id)).mappings().first()
        if row is None:
            raise UnknownRequest(f"no request with id {request_id!r}")
        return Request.from_row(row)

    @staticmethod
    def _requests(conn, lineage: str | None) -> list[Request]:
        query = select(requests_table).order_by(requests_table.c.seq)
        if lineage is not None:
            query = query.where(requests_table.c.lineage == lineage)
        return [Request.from_row(row) for row in conn.execute(query).mappings()]

    def _state_of(self, conn, request_id: str) -> str:
        row = conn.execute(select(requests_table.c.state).where(requests_table.c.id == request_id)).first()
        if row is None:
            raise UnknownRequest(f"no request with id {request_id!r}")
        return row.state

    def _change_state(
        self, conn, request_id: str, from_state: str, to_state: str, actor: str, detail: dict, **fields
    ) -> None:
        if to_state not in STATES:
            raise ValueError(f"unknown state {to_state!r}")
        if to_state not in TRANSITIONS[from_state]:
            raise StateConflict(f"{request_id}: {from_state} -> {to_state} is not allowed")
        # Compare-and-set: the WHERE on the old state makes a concurrent change lose cleanly.
        changed = conn.execute(
            update(requests_table)
            .where(requests_table.c.id == request_id, requests_table.c.state == from_state)
            .values(state=to_state, updated_at=_now(), **fields)
        ).rowcount
        if changed != 1:
            raise StateConflict(f"{request_id} changed state meanwhile (expected {from_state})")
        self._audit(conn, request_id, from_state, to_state, actor, detail)

    @staticmethod
    def _audit(
        conn,
        request_id: str | None,
        from_state: str | None,
        to_state: str | None,
        actor: str,
        detail: dict,
        *,
        event: str = "state",
    ) -> None:
        """One row of the audit trail (`detail` made JSON-safe: dates and paths become strings)."""
        conn.execute(
            insert(audit_table).values(
                event=event,
                request_id=request_id,
                from_state=from_state,
                to_state=to_state,
                actor=actor,
                at=_now(),
                detail=json.loads(json.dumps(detail, default=str)),
            )
        )
