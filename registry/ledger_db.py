"""The ledger's tables and database engine (docs/design.md, "Registry and ledger"; registry/ledger.py uses them).

Three tables:
- `lethe_requests`: one row per request, with a monotonic sequence number (the queue order), a unique id,
  the request body, its state, parent and candidate versions, timestamps and the error;
- `lethe_audit`: one row per state change or event with actor and time; append-only, enforced by the
  database itself (triggers refuse UPDATE and DELETE), not merely by the ledger's manners;
- `lethe_revocations`: one row per revocation, its chain of replays and its state. A query store, so that
  "is a revocation pending in this lineage?" is one indexed lookup rather than a scan of the audit
  history; every change to it is also audited. `pending_lineage` holds the lineage while the revocation is
  pending and NULL after: its unique constraint makes "one pending revocation per lineage" a fact the
  database keeps, whatever the callers do.

SQLite under LETHE_HOME by default; PostgreSQL in production.
"""

from __future__ import annotations

import time
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
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from registry.requests import LIMITS

# The execution option that marks a connection as only reading (registry/ledger.py `Ledger._reading`).
READ_ONLY = "lethe_read_only"

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
    Column("event", String(32), nullable=False),  # "state" (a request's state changed), "rollback", ...
    Column("request_id", String(64), ForeignKey("lethe_requests.id"), nullable=True, index=True),
    Column("from_state", String(32), nullable=True),
    Column("to_state", String(32), nullable=True),
    Column("actor", String(200), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("detail", JSON, nullable=False),
)
revocations_table = Table(
    "lethe_revocations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("request_id", String(64), ForeignKey("lethe_requests.id"), nullable=False, index=True),
    Column("lineage", String(200), nullable=False, index=True),
    Column("pending_lineage", String(200), nullable=True, unique=True),  # see the module's docstring
    Column("approver", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("parent_version", Integer, nullable=True),
    Column("production_before", Integer, nullable=True),
    Column("replays", JSON, nullable=False),  # the replay request ids, in order; the last is the head
    Column("state", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
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


def create_schema(engine: Engine) -> None:
    """Create the tables and the audit table's append-only triggers unless they exist."""
    for attempt in range(5):  # several processes may race to create the same tables
        try:
            metadata.create_all(engine)
            with engine.begin() as conn:
                for statement in _APPEND_ONLY_SQLITE if engine.dialect.name == "sqlite" else _APPEND_ONLY_POSTGRES:
                    conn.execute(text(statement))
                _backfill_revocations(conn)
            return
        except (IntegrityError, OperationalError):
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """SQLite gets a long busy timeout and IMMEDIATE transactions, so concurrent writers queue up
    instead of failing, and a read-then-write (claim, revoke) cannot interleave with another writer.
    A connection with the READ_ONLY execution option (the ledger's reads) takes neither lock."""
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
        def _sqlite_begin(conn):
            # A read (READ_ONLY) takes a snapshot and no lock: WAL lets it run beside a writer.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    # PostgreSQL: every write is a compare-and-set on the row, and the checks that read several rows
    # before writing (claim_head's busy check, revoke's pending and busy checks) run under the lock below.
    engine = create_engine(url, echo=echo, pool_pre_ping=True)

    @event.listens_for(engine, "begin")
    def _postgres_ledger_lock(conn):
        # One writing transaction at a time: claims, submissions, decisions and revocations are rare and
        # short, and serialising them makes "head of queue", "one per lineage" and "one pending revocation"
        # exact. Reads (`lethe status`, the approval poll) take no lock: SQLAlchemy's autobegin fires this
        # hook for them too, so they are marked READ_ONLY and pass.
        if not conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7163554)")

    return engine


def _backfill_revocations(conn) -> None:
    """A ledger written before revocations had their own table kept them only as audit events: copy them
    into `lethe_revocations` once, so a pending one still holds its lineage and completed ones stay listed."""
    if conn.execute(select(func.count()).select_from(revocations_table)).scalar_one():
        return
    events = conn.execute(
        select(audit_table, requests_table.c.lineage)
        .join(requests_table, requests_table.c.id == audit_table.c.request_id)
        .where(audit_table.c.event.in_(("revocation-requested", "revocation-completed", "revocation-failed")))
        .order_by(audit_table.c.id)
    ).mappings()
    ended = {"revocation-completed": "completed", "revocation-failed": "failed"}
    found: dict[str, dict] = {}
    for event_row in events:
        detail = event_row["detail"]
        if event_row["event"] == "revocation-requested":
            found[detail["revocation"]] = {
                "id": detail["revocation"],
                "request_id": event_row["request_id"],
                "lineage": event_row["lineage"],
                "pending_lineage": event_row["lineage"],
                "approver": detail["approver"],
                "reason": detail["reason"],
                "parent_version": detail["parent_version"],
                "production_before": detail["production_before"],
                "replays": detail["replays"],
                "state": "pending",
                "created_at": event_row["at"],
                "updated_at": event_row["at"],
            }
        elif (row := found.get(detail.get("revocation"))) is not None:
            row.update(state=ended[event_row["event"]], pending_lineage=None, updated_at=event_row["at"])
    for row in found.values():
        conn.execute(insert(revocations_table).values(**row))
