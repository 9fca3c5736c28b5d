"""Human approval through Prefect: the paused run's typed form, and `lethe approve` answering it.

The request flow pauses with `pause_flow_run(wait_for_input=ApprovalInput)`: the Prefect UI shows the
form, and `lethe approve`/`reject` send the same input through the API (`answer_paused_run`). The
ledger records which run waits, on which host and in which process, so an answer is never handed to a
run whose process is gone (Prefect would still show it paused): the CLI then decides directly.
"""

from __future__ import annotations

import os
import socket
import time
from uuid import UUID

from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from pipeline.settings import LetheSettings
from pipeline.values import Answer
from registry.governance import check_approver
from registry.ledger import AWAITING_APPROVAL, PROMOTING, Ledger

APPROVAL_TIMEOUT_SECONDS = 7 * 24 * 3600
ANSWER_WAIT_SECONDS = 300  # how long `lethe approve` waits for the resumed run to record its decision


class ApprovalInput(RunInput):
    """The approval form shown in the Prefect UI (and sent by `lethe approve`)."""

    approve: bool
    approver: str
    comment: str = ""


def wait_for_approval(request_id: str) -> Answer:
    """Pause this flow run until a person answers (the UI form or `lethe approve`/`reject`)."""
    form = pause_flow_run(
        wait_for_input=ApprovalInput.with_initial_data(approve=True, approver=""),
        timeout=APPROVAL_TIMEOUT_SECONDS,
        key=f"approval-{request_id}",
    )
    return Answer(approve=form.approve, approver=form.approver, comment=form.comment)


def _waiting_run(ledger: Ledger, request_id: str) -> dict | None:
    """Where the run that waits for this request's answer is (flow run id, host, pid), if any."""
    waiting = [
        h["detail"]
        for h in ledger.history(request_id)
        if h["to_state"] == AWAITING_APPROVAL and h["detail"].get("flow_run_id")
    ]
    return waiting[-1] if waiting else None


def process_gone(waiting: dict) -> bool:
    """True when the paused run ran on this machine and its process has died (SIGKILL, a crash): no
    one will take an answer handed to that run."""
    if waiting.get("host") != socket.gethostname() or not waiting.get("pid"):
        return False
    try:
        os.kill(int(waiting["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def answer_paused_run(settings: LetheSettings, request_id: str, answer: Answer) -> bool:
    """If a flow run paused for this request's approval, hand it the answer through the Prefect API and
    wait until the ledger shows the outcome. Returns False when no live run waits (decide directly).

    Raises:
        NotAllowed: the approver may not answer (checked before anything is sent).
    """
    ledger = Ledger(settings.ledger_url)
    request = ledger.get(request_id)
    if request.state != AWAITING_APPROVAL:
        return False
    waiting = _waiting_run(ledger, request_id)
    if waiting is None or process_gone(waiting):
        return False
    check_approver(answer.approver, settings.approvers, request.requester)  # refuse before resuming
    from prefect.flow_runs import resume_flow_run

    try:
        resume_flow_run(
            UUID(waiting["flow_run_id"]),
            run_input={"approve": answer.approve, "approver": answer.approver, "comment": answer.comment},
        )
    except Exception:  # noqa: BLE001 - the run is gone (crashed or cancelled): decide directly
        return False
    deadline = time.time() + ANSWER_WAIT_SECONDS
    # `promoting` is an approval half-way (the ledger took it, the alias is moving): wait for its end too
    while time.time() < deadline and ledger.get(request_id).state in (AWAITING_APPROVAL, PROMOTING):
        time.sleep(1)
    # A run that took the answer decides within seconds; one that did not is dead without Prefect
    # knowing (killed elsewhere): decide directly. Every ledger change is a compare-and-set, so a late
    # run and the CLI cannot both decide.
    return ledger.get(request_id).state not in (AWAITING_APPROVAL, PROMOTING)
