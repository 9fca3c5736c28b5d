"""The request ledger on SQLite (always) and PostgreSQL (when LETHE_TEST_POSTGRES_URL is set).

The PostgreSQL case uses the real server `.ci/run` points at; it fails, not skips, when the URL is
given and the server is unreachable.
"""

import multiprocessing
import os

import pytest
from sqlalchemy import text

from registry.ledger import (
    AWAITING_APPROVAL,
    PROMOTED,
    PROMOTING,
    QUEUED,
    RUNNING,
    ConflictingRequest,
    DuplicateRequest,
    InvalidRequest,
    Ledger,
    RequestSpec,
    StateConflict,
)

LINEAGE = "shapes-t2i"


def spec(concept, requester="alice", **kw):
    return RequestSpec(concept=concept, requester=requester, **kw)


def test_submit_claim_and_audit_in_fifo_order(ledger_url):
    ledger = Ledger(ledger_url)
    first = ledger.submit(spec("circle", id="req-1"), lineage=LINEAGE)
    second = ledger.submit(spec("striped", id="req-2"), lineage=LINEAGE)
    assert (first.seq < second.seq) and first.state == QUEUED

    claimed = ledger.claim_head(LINEAGE, actor="flow")
    assert claimed.id == "req-1" and claimed.state == RUNNING
    assert ledger.claim_head(LINEAGE, actor="flow") is None, "one request per lineage at a time"

    ledger.transition("req-1", AWAITING_APPROVAL, actor="flow", candidate_version=3, parent_version=2)
    assert ledger.claim_head(LINEAGE, actor="flow") is None
    ledger.transition("req-1", PROMOTING, actor="bob", expected=AWAITING_APPROVAL)
    assert ledger.claim_head(LINEAGE, actor="flow") is None, "a promotion under way decides the next parent"
    ledger.transition("req-1", PROMOTED, actor="bob", expected=PROMOTING)
    assert ledger.claim_head(LINEAGE, actor="flow").id == "req-2"

    trail = [(h["from_state"], h["to_state"], h["actor"]) for h in ledger.history("req-1")]
    assert trail == [
        (None, QUEUED, "alice"),
        (QUEUED, RUNNING, "flow"),
        (RUNNING, AWAITING_APPROVAL, "flow"),
        (AWAITING_APPROVAL, PROMOTING, "bob"),
        (PROMOTING, PROMOTED, "bob"),
    ]
    assert ledger.get("req-1").candidate_version == 3
    assert ledger.erased_concepts(LINEAGE) == ["circle"]


def test_refusals_write_nothing(ledger_url):
    ledger = Ledger(ledger_url)
    ledger.submit(spec("circle", id="req-1"), lineage=LINEAGE)
    before = (ledger.requests(), ledger.history())
    with pytest.raises(DuplicateRequest):
        ledger.submit(spec("star", id="req-1"), lineage=LINEAGE)
    with pytest.raises(ConflictingRequest, match="already requested"):
        ledger.submit(spec("circle", id="req-9"), lineage=LINEAGE)
    bad = [
        spec(""),
        spec("x" * 10_000),
        spec("circle\x00"),
        spec("star", id="../etc/passwd"),
        spec("star", id="a/b"),
        spec("star", anchor="Star"),
        spec("star", requester=" "),
    ]
    for request in bad:
        with pytest.raises(InvalidRequest):
            ledger.submit(request, lineage=LINEAGE)
    assert (ledger.requests(), ledger.history()) == before


def test_invalid_request_names_every_problem():
    ledger = Ledger("sqlite://")
    with pytest.raises(InvalidRequest) as raised:
        ledger.submit(spec("", requester="", id="../x"), lineage=LINEAGE)
    message = str(raised.value)
    assert "concept: is empty" in message and "requester: is empty" in message and "id:" in message


def test_illegal_and_lost_race_transitions_are_refused(ledger_url):
    ledger = Ledger(ledger_url)
    ledger.submit(spec("circle", id="req-1"), lineage=LINEAGE)
    with pytest.raises(StateConflict):
        ledger.transition("req-1", PROMOTED, actor="mallory")  # queued -> promoted skips the gate
    with pytest.raises(StateConflict):
        ledger.transition("req-1", PROMOTING, actor="mallory")  # so does queued -> promoting
    ledger.claim_head(LINEAGE, actor="flow")
    with pytest.raises(StateConflict):
        ledger.transition("req-1", PROMOTED, actor="bob", expected=AWAITING_APPROVAL)
    assert ledger.get("req-1").state == RUNNING


def test_audit_table_is_append_only_in_the_database(ledger_url):
    ledger = Ledger(ledger_url)
    ledger.submit(spec("circle", id="req-1"), lineage=LINEAGE)
    for statement in ("UPDATE lethe_audit SET actor = 'mallory'", "DELETE FROM lethe_audit"):
        with pytest.raises(Exception, match="append-only"):
            with ledger.engine.begin() as conn:
                conn.execute(text(statement))
    assert [h["actor"] for h in ledger.history()] == ["alice"]


def _submit_many(url, worker, count, queue):
    ledger = Ledger(url)
    ids = []
    for k in range(count):
        ids.append(
            ledger.submit(
                spec(f"concept {worker}-{k}", requester=f"w{worker}", id=f"w{worker}-r{k}"), lineage=LINEAGE
            ).id
        )
    queue.put(ids)


@pytest.mark.slow
def test_eight_processes_submitting_25_each_lose_and_duplicate_nothing(ledger_url):
    Ledger(ledger_url)  # create the schema once, as a deployment would
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_submit_many, args=(ledger_url, w, 25, results)) for w in range(8)]
    for p in workers:
        p.start()
    submitted = [i for _ in workers for i in results.get(timeout=300)]
    for p in workers:
        p.join(timeout=60)
        assert p.exitcode == 0
    rows = Ledger(ledger_url).requests(LINEAGE)
    assert len(submitted) == 200 and len(rows) == 200
    assert sorted(r.id for r in rows) == sorted(submitted)
    seqs = [r.seq for r in rows]
    assert len(set(seqs)) == 200 and seqs == sorted(seqs)


@pytest.mark.slow
def test_concurrent_claims_hand_the_head_to_exactly_one_worker(ledger_url):
    ledger = Ledger(ledger_url)
    for k in range(3):
        ledger.submit(spec(f"c{k}", id=f"r{k}"), lineage=LINEAGE)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_claim_once, args=(ledger_url, results)) for _ in range(6)]
    for p in workers:
        p.start()
    claims = [results.get(timeout=120) for _ in workers]
    for p in workers:
        p.join(timeout=60)
    assert sorted(c for c in claims if c) == ["r0"]


def _claim_once(url, queue):
    claimed = Ledger(url).claim_head(LINEAGE, actor=f"worker-{os.getpid()}")
    queue.put(claimed.id if claimed else None)


def test_reads_do_not_wait_for_a_writer(ledger_url):
    """A writing transaction holds the ledger's write lock (BEGIN IMMEDIATE on SQLite, the advisory lock on
    PostgreSQL); reads — `lethe status`, the approval poll — take neither, so they answer meanwhile."""
    import threading

    ledger = Ledger(ledger_url)
    ledger.submit(spec("circle", id="req-1"), lineage=LINEAGE)
    read = []
    with ledger._transaction() as conn:
        conn.execute(text("SELECT 1"))  # the write lock is taken at BEGIN
        reader = threading.Thread(target=lambda: read.append([r.id for r in ledger.requests()]))
        reader.start()
        reader.join(timeout=10)
        assert read == [["req-1"]], "the read waited for the writer"
