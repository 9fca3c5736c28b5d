"""Prefect global concurrency limits (docs/design.md, "Orchestration").

- `lineage-<model_name>`, limit 1: one drainer per lineage. The ledger already refuses a second
  claim while a request is running; the limit keeps a second drainer (a cron run, an event-triggered
  run, a `lethe run`) from even starting, so runs do not race on the ledger and the UI shows who holds
  the lineage.
- `gpu`, limit `settings.gpu_slots`: training and evaluation sampling take a GPU slot.

Prefect acquires nothing from a limit that does not exist (it logs a warning and goes on), so the flows
create the limits they use when missing; a limit that exists is left as the operator set it.

A holder that dies (SIGKILL, a lost machine) frees its slots when its lease expires: a Prefect server's
repossessor revokes expired leases. The embedded setup (Prefect's ephemeral API) has no such service
and keeps leases in its server's memory, which dies with the holder: its slots would stay occupied for
good and no later run could drain the lineage. `reclaim_embedded_slots` frees them (see there).
"""

from __future__ import annotations

import fcntl
import functools
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings

GPU_LIMIT = "gpu"


class LineageBusy(Exception):
    """Another drainer holds the lineage's limit (it drains the queue; this run has nothing to do)."""


def lineage_limit(model_name: str) -> str:
    return f"lineage-{model_name}"


def ensure_limit(name: str, limit: int) -> None:
    """Create the global concurrency limit `name` with `limit` slots unless it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
        except ObjectAlreadyExists:  # another run created it meanwhile
            pass


@functools.cache
def reclaim_embedded_slots() -> bool:
    """Embedded setup only: free the slots that killed runs left occupied. Returns True if it looked.

    Every process that takes slots from the embedded API holds a shared lock on a file beside Prefect's
    database for the rest of its life (the kernel drops it when the process dies, however it dies). A
    process that can take that lock exclusively is the only one alive, so any occupied slot belongs to
    a dead run: it sets every limit's active slots to 0, then keeps a shared lock like the others. Once
    per process. With a Prefect server (PREFECT_API_URL) it does nothing: expired leases are revoked there.
    """
    settings = get_current_settings()
    if settings.api.url:
        return False
    Path(settings.home).mkdir(parents=True, exist_ok=True)
    lock = os.open(Path(settings.home) / "slot-holders.lock", os.O_CREAT | os.O_RDWR)  # open until exit, on purpose
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
    except BlockingIOError:
        alone = False
    if alone:
        with get_client(sync_client=True) as client:
            for limit in client.read_global_concurrency_limits(limit=200):
                if limit.active_slots:
                    client.update_global_concurrency_limit(limit.name, GlobalConcurrencyLimitUpdate(active_slots=0))
    fcntl.flock(lock, fcntl.LOCK_SH)
    return True


@contextmanager
def lineage_held(model_name: str, *, wait_seconds: float) -> Iterator[None]:
    """Hold the lineage's slot for the body.

    Raises:
        LineageBusy: the slot was not free within `wait_seconds` (nothing was done).
    """
    name = lineage_limit(model_name)
    ensure_limit(name, 1)
    reclaim_embedded_slots()
    with ExitStack() as stack:
        try:
            # A drainer may hold its lineage for days (a run paused for approval): the lease is renewed
            # in the background; a failed renewal is logged, not fatal (the ledger still guards claims).
            stack.enter_context(
                concurrency(
                    name, occupy=1, timeout_seconds=wait_seconds, strict=True, raise_on_lease_renewal_failure=False
                )
            )
        except TimeoutError:
            raise LineageBusy(f"{name} is held by another run (waited {wait_seconds:g} s)") from None
        yield


@contextmanager
def gpu_held(slots: int) -> Iterator[None]:
    """Hold one slot of the `gpu` limit for the body (waits as long as it takes)."""
    ensure_limit(GPU_LIMIT, slots)
    reclaim_embedded_slots()
    with concurrency(GPU_LIMIT, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
        yield
