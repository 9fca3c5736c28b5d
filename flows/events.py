"""Lethe's Prefect events: names, the lineage resource, and the submit announcement.

    lethe.request.submitted  after a request is written to the ledger; the served drainer's trigger
    lethe.audit.failed       when the erosion audit finds production eroded; for alert automations

Both concern the resource `lethe.lineage.<model_name>`, so a trigger or an automation can follow one
lineage (or all of them: `lethe.lineage.*`).
"""

from __future__ import annotations

import asyncio
import logging

REQUEST_SUBMITTED = "lethe.request.submitted"
AUDIT_FAILED = "lethe.audit.failed"
SEND_TIMEOUT_SECONDS = 10.0


def lineage_resource_id(model_name: str) -> str:
    return f"lethe.lineage.{model_name}"


def lineage_resource(model_name: str, **labels: str) -> dict[str, str]:
    return {"prefect.resource.id": lineage_resource_id(model_name), "prefect.resource.name": model_name, **labels}


def announce_submitted(model_name: str, requests: list[dict]) -> str:
    """Emit `lethe.request.submitted` for each request (after the ledger write); never raises.

    Returns "sent", or why not: the ledger is the system of record and the drainer's schedule picks up
    whatever an event did not announce, so a missing event delays a request, never loses it.

    Not `prefect.events.emit_event`: it queues the event for a background worker, which without a
    configured API starts a throwaway ephemeral server (seconds, and no deployment listens to it), and
    with an unreachable one reports nothing back. A short-lived command wants a bounded, answered send.
    """
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        return "skipped: no Prefect API configured (PREFECT_API_URL); nothing listens in the embedded setup"
    from prefect.events import Event
    from prefect.events.clients import PrefectEventsClient

    events = [
        Event(
            event=REQUEST_SUBMITTED,
            resource=lineage_resource(model_name),
            payload={"request_id": r["id"], "seq": r["seq"], "concept": r["concept"]},
        )
        for r in requests
    ]

    async def send() -> None:
        async with PrefectEventsClient(api_url=api_url, reconnection_attempts=2) as client:
            for event in events:
                await client.emit(event)

    client_log = logging.getLogger("prefect.events.clients")  # its connection warning would repeat ours
    level = client_log.level
    client_log.setLevel(logging.ERROR)
    try:
        asyncio.run(asyncio.wait_for(send(), timeout=SEND_TIMEOUT_SECONDS))
    except Exception as error:  # noqa: BLE001 - unreachable, refused, timed out: reported, never fatal
        return f"not sent: {type(error).__name__}: {error}"
    finally:
        client_log.setLevel(level)
    return "sent"
