"""The request ledger: the system of record for unlearning requests (DESIGN.md, "Registry and ledger").

Two tables. `requests`: one row per request, with a monotonic sequence number (the queue order), a
unique id, the request body, its state, parent and candidate versions, timestamps and the error.
`audit`: one row per state change with actor and time; append-only, enforced by the database itself
(triggers refuse UPDATE and DELETE), not merely by this module's manners.

SQLite under LETHE_HOME by default; PostgreSQL in production. Every state change is a compare-and-set
on the current state inside one transaction, so two workers can never both claim, promote or reject
the same request, and a claim never skips the head of the queue.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from registry.requests import LIMITS, InvalidRequest, Request, RequestSpec

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

metadata = MetaData()
requests_table = Table(
    "lethe_requests",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("lineage", String(200), nullable=False, index=True),
    Column("concept", String(LIMITS["concept"]), nullable=False),
    Column("requester", String(200), nullable=False),
    Column("body", JSON, nullable=False),
    Column("state", String(32), nullable=False, index=True),
    Column("parent_version", Integer, nullable=True),
    Column("candidate_version", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
audit_table = Table(
    "lethe_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event", String(32), nullable=False),  # "state" (a request's state changed) or "rollback"
    Column("request_id", String(64), ForeignKey("lethe_requests.id"), nullable=True, index=True),
    Column("from_state", String(32), nullable=True),
    Column("to_state", String(32), nullable=True),
    Column("actor", String(200), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("detail", JSON, nullable=False),
)

_APPEND_ONLY_SQLITE = [
    "CREATE TRIGGER IF NOT EXISTS lethe_audit_no_update BEFORE UPDATE ON lethe_audit "
    "BEGIN SELECT RAISE(ABORT, 'lethe_audit is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS lethe_audit_no_delete BEFORE DELETE ON lethe_audit "
    "BEGIN SELECT RAISE(ABORT, 'lethe_audit is append-only'); END",
]
_APPEND_ONLY_POSTGRES = [
    "CREATE OR REPLACE FUNCTION lethe_audit_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION 'lethe_audit is append-only'; END; $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS lethe_audit_append_only ON lethe_audit",
    "CREATE TRIGGER lethe_audit_append_only BEFORE UPDATE OR DELETE ON lethe_audit "
    "FOR EACH ROW EXECUTE FUNCTION lethe_audit_append_only()",
]


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
    state: str  # "pending", "completed" or "failed"


class StateConflict(LedgerError):
    """The request is not in a state from which this change is allowed (or it changed meanwhile)."""


def _now() -> datetime:
    return datetime.now(UTC)


def _new_request_id(concept: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", concept.lower()).strip("-")[:24] or "request"
    return f"{slug}-{time.time_ns():x}"


class Ledger:
    """The ledger of one database. All methods are safe to call from concurrent processes."""

    def __init__(self, url: str, *, echo: bool = False):
        self.url = url
        self.engine: Engine = _make_engine(url, echo=echo)
        self._create_schema()

    # ---------------------------------------------------------------- schema
    def _create_schema(self) -> None:
        for attempt in range(5):  # several processes may race to create the same tables
            try:
                metadata.create_all(self.engine)
                with self.engine.begin() as conn:
                    for statement in (
                        _APPEND_ONLY_SQLITE if self.engine.dialect.name == "sqlite" else _APPEND_ONLY_POSTGRES
                    ):
                        conn.execute(text(statement))
                return
            except (IntegrityError, OperationalError):
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

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
        if not all(spec.replays for spec in specs) and (pending := self.pending_revocation(lineage)) is not None:
            raise ConflictingRequest(
                f"revocation {pending.id} of {pending.request_id} is being re-derived in lineage "
                f"{lineage!r}; submit again once it is decided"
            )
        now = _now()
        try:
            with self._transaction() as conn:
                for request_id, concept, spec in zip(ids, concepts, specs):
                    if conn.execute(select(requests_table.c.id).where(requests_table.c.id == request_id)).first():
                        raise DuplicateRequest(f"a request with id {request_id!r} exists already")
                    clash = conn.execute(
                        select(requests_table.c.id, requests_table.c.state).where(
                            requests_table.c.lineage == lineage,
                            requests_table.c.state.in_((*ACTIVE_STATES, *ERASED_STATES)),
                            requests_table.c.concept == concept,
                        )
                    ).first()
                    if clash and not spec.replays:  # a replay re-derives a concept that is erased on purpose
                        verb = "was erased by" if clash.state in ERASED_STATES else "is already requested as"
                        raise ConflictingRequest(
                            f"concept {concept!r} {verb} {clash.id} ({clash.state}) in lineage {lineage!r}"
                        )
                    seq = conn.execute(
                        insert(requests_table).values(
                            id=request_id,
                            lineage=lineage,
                            concept=concept,
                            requester=spec.requester,
                            body=spec.body(),
                            state=QUEUED,
                            created_at=now,
                            updated_at=now,
                        )
                    ).inserted_primary_key[0]
                    self._audit(conn, request_id, None, QUEUED, spec.requester, {"seq": seq})
        except IntegrityError:
            raise DuplicateRequest("a request id exists already (submitted concurrently)") from None
        return [self.get(request_id) for request_id in ids]

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

    def record_event(self, event: str, *, actor: str, detail: dict) -> None:
        """Audit something that is not a request's state change (e.g. a rollback of production)."""
        with self._transaction() as conn:
            self._audit(conn, None, None, None, actor, detail, event=event)

    def revoke(self, request_id: str, *, approver: str, reason: str, production_version: int | None) -> Revocation:
        """Record a revocation of a promoted request and queue its re-derivation: every request promoted after
        it in the lineage is replayed, in order, as a new request (same concept, synonyms, preserve set,
        method and options) linked to the one it replays. All in one transaction; the approver rules are
        the caller's (registry/governance.py `revoke`).

        Raises:
            UnknownRequest; RevocationRefused: the request was never promoted (or was revoked already), a
            revocation is pending in the lineage, or requests of the lineage are still queued or in flight.
        """
        target = self.get(request_id)
        if target.state != PROMOTED:
            raise RevocationRefused(f"{request_id} is {target.state}: only a promoted request can be revoked")
        if (pending := self.pending_revocation(target.lineage)) is not None:
            raise RevocationRefused(
                f"revocation {pending.id} of {pending.request_id} is pending in lineage {target.lineage!r}"
            )
        lineage = self.requests(target.lineage)
        if busy := [r.id for r in lineage if r.state in ACTIVE_STATES]:
            raise RevocationRefused(
                f"requests of lineage {target.lineage!r} are in the queue ({', '.join(busy)}); "
                "let them finish (or reject them) first"
            )
        later = [r for r in lineage if r.seq > target.seq and r.state == PROMOTED]
        revocation_id = f"rev-{time.time_ns():x}"
        replays = [
            RequestSpec(
                **{
                    **{
                        f: getattr(r, f)
                        for f in (
                            "concept",
                            "requester",
                            "synonyms",
                            "anchor",
                            "preserve",
                            "method",
                            "options",
                            "reason",
                        )
                    },
                    "id": f"{r.id[:40]}-replay-{revocation_id[-6:]}",
                    "replays": r.id,
                    "revocation": revocation_id,
                }
            )
            for r in later
        ]
        detail = {
            "revocation": revocation_id,
            "approver": approver,
            "reason": reason,
            "parent_version": target.parent_version,
            "production_before": production_version,
            "replays": [spec.id for spec in replays],
        }
        with self._transaction() as conn:
            self._audit(conn, request_id, PROMOTED, PROMOTED, approver, detail, event=REVOCATION_REQUESTED)
        if replays:
            self.submit_many(replays, lineage=target.lineage)
        return self.revocation(revocation_id)

    def _revocation_events(self, lineage: str | None = None) -> list[dict]:
        events = [
            h for h in self.history() if h["event"] in (REVOCATION_REQUESTED, REVOCATION_COMPLETED, REVOCATION_FAILED)
        ]
        if lineage is not None:
            ours = {r.id for r in self.requests(lineage)}
            events = [h for h in events if h["request_id"] in ours]
        return events

    def revocation(self, revocation_id: str) -> Revocation:
        """Raises UnknownRequest when no revocation has this id."""
        events = [h for h in self._revocation_events() if h["detail"].get("revocation") == revocation_id]
        if not events:
            raise UnknownRequest(f"no revocation with id {revocation_id!r}")
        asked, last = events[0], events[-1]["event"]
        d = asked["detail"]
        state = {REVOCATION_COMPLETED: "completed", REVOCATION_FAILED: "failed"}.get(last, "pending")
        return Revocation(
            revocation_id,
            asked["request_id"],
            d["approver"],
            d["reason"],
            d["parent_version"],
            d["production_before"],
            tuple(d["replays"]),
            state,
        )

    def pending_revocation(self, lineage: str) -> Revocation | None:
        ids = dict.fromkeys(h["detail"]["revocation"] for h in self._revocation_events(lineage))
        pending = [r for r in (self.revocation(i) for i in ids) if r.state == "pending"]
        return pending[0] if pending else None

    def finish_revocation(self, revocation_id: str, *, actor: str, detail: dict) -> None:
        """The chain's head was promoted: the revoked request becomes `revoked`, those it replayed `superseded`."""
        revocation = self.revocation(revocation_id)
        replayed = {replay_id: self.get(replay_id).replays for replay_id in revocation.replays}  # read before writing
        with self._transaction() as conn:
            self._change_state(
                conn,
                revocation.request_id,
                PROMOTED,
                REVOKED,
                actor,
                {"revocation": revocation_id, "reason": revocation.reason},
            )
            for replay_id, original in replayed.items():
                self._change_state(
                    conn, original, PROMOTED, SUPERSEDED, actor, {"revocation": revocation_id, "by": replay_id}
                )
            completed = {"revocation": revocation_id, **detail}
            self._audit(conn, revocation.request_id, None, None, actor, completed, event=REVOCATION_COMPLETED)

    def fail_revocation(self, revocation_id: str, *, actor: str, reason: str) -> None:
        """A replay was rejected or failed: the replays still queued are cancelled; nothing was revoked."""
        revocation = self.revocation(revocation_id)
        with self._transaction() as conn:
            for replay_id in revocation.replays:
                if self._state_of(conn, replay_id) == QUEUED:
                    self._change_state(conn, replay_id, QUEUED, CANCELLED, actor, {"reason": reason}, error=reason)
            failed = {"revocation": revocation_id, "reason": reason}
            self._audit(conn, revocation.request_id, None, None, actor, failed, event=REVOCATION_FAILED)

    # ---------------------------------------------------------------- reads
    def get(self, request_id: str) -> Request:
        with self.engine.connect() as conn:
            row = conn.execute(select(requests_table).where(requests_table.c.id == request_id)).mappings().first()
        if row is None:
            raise UnknownRequest(f"no request with id {request_id!r}")
        return Request.from_row(row)

    def requests(self, lineage: str | None = None) -> list[Request]:
        query = select(requests_table).order_by(requests_table.c.seq)
        if lineage is not None:
            query = query.where(requests_table.c.lineage == lineage)
        with self.engine.connect() as conn:
            return [Request.from_row(row) for row in conn.execute(query).mappings()]

    def history(self, request_id: str | None = None) -> list[dict]:
        query = select(audit_table).order_by(audit_table.c.id)
        if request_id is not None:
            query = query.where(audit_table.c.request_id == request_id)
        with self.engine.connect() as conn:
            return [{**row, "at": row["at"].isoformat()} for row in conn.execute(query).mappings()]

    def erased_concepts(self, lineage: str) -> list[str]:
        """Concepts of promoted requests, in the order they were queued."""
        return [r.concept for r in self.requests(lineage) if r.state in ERASED_STATES]

    # ---------------------------------------------------------------- internals
    def _transaction(self):
        return self.engine.begin()

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


def _make_engine(url: str, *, echo: bool) -> Engine:
    """SQLite gets a long busy timeout and IMMEDIATE transactions, so concurrent writers queue up
    instead of failing, and a read-then-write (claim) cannot interleave with another writer."""
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 60, "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # PostgreSQL: SERIALIZABLE would also work; REPEATABLE READ is not needed because every write is
    # a compare-and-set on the row, and claim_head's busy check is guarded by a row lock below.
    engine = create_engine(url, echo=echo, pool_pre_ping=True)

    @event.listens_for(engine, "begin")
    def _postgres_lineage_lock(conn):
        # One transaction at a time writes the ledger: claims, submissions and promotions are rare
        # and short, and serialising them makes "head of queue" and "one per lineage" exact.
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7163554)")

    return engine
