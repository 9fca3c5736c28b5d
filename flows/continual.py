"""Prefect flows that drain the request queue, one lineage at a time (docs/design.md, "Orchestration").

    continual_unlearning: claim the next request → process_request → repeat until the queue is empty.
    process_request:      parent → unlearn and evaluate → register → gate → approval → promote/reject.

Every step is one task around one function of pipeline/; every outcome is written to the ledger (the
system of record) before the flow moves on. A failed gate or a rejection never moves `production`,
and the queue goes on from the unchanged version.
"""

from __future__ import annotations

import os
import socket

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.approval import ApprovalInput, wait_for_approval
from flows.concurrency import LineageBusy, gpu_held, lineage_held
from pipeline.decide import auto_approval, failure_message
from pipeline.markdown import gate_markdown
from pipeline.settings import LetheSettings, load_settings
from registry.ledger import AWAITING_APPROVAL, FAILED, REJECTED
from registry.requests import Request
from tasks.requests import (
    apply_answer,
    claim_next_request,
    measure_revocation,
    parent_version,
    record_failure,
    record_gate,
    register_candidate,
    unlearn_and_evaluate_request,
    unmeasured_revocations,
)

__all__ = ["ApprovalInput", "continual_unlearning", "process_request"]


def _artifact_key(prefix: str, name: str) -> str:
    return f"{prefix}-{name.lower()}"[:60].replace("_", "-").replace(".", "-")


@flow(name="process-request", flow_run_name="request-{request.id}")
def process_request(request: Request, auto_approve: bool = False, unlearn_steps: int | None = None) -> dict:
    """One request's life: parent → unlearn and evaluate → register → gate → approval → promote/reject."""
    logger = get_run_logger()
    settings = load_settings()
    if unlearn_steps is not None:
        settings = settings.model_copy(update={"unlearn_steps": unlearn_steps})
    work_dir = str(settings.home / "requests" / request.id)

    step = "finding the version it starts from"
    try:
        parent = parent_version(settings, request)
        logger.info("request %s: erase %r from version %s", request.id, request.concept, parent.version)
        with gpu_held(settings.gpu_slots):
            step = "unlearning and evaluating the candidate"
            outcome = unlearn_and_evaluate_request(settings, request, parent, work_dir)
        step = "registering the candidate"
        version = register_candidate(settings, request, parent, outcome)
        create_markdown_artifact(
            gate_markdown(request.id, outcome, version),
            key=_artifact_key("gate", request.id),
            description=f"gate of request {request.id}",
        )
        step = "recording the gate"
        waiting = None if auto_approve else _where_this_run_waits()
        state = record_gate(settings, request, parent, outcome, version, waiting=waiting)
    except Exception as error:  # the ledger must say why (never left running), then the flow fails
        record_failure(settings, request.id, failure_message(step, error), actor="flow")
        raise

    summary = {
        "id": request.id,
        "concept": request.concept,
        "parent_version": parent.version,
        "candidate_version": version,
        "resumed_from_step": outcome.resumed_from_step,
        "reused_training": outcome.reused_training,
        "gate_passed": outcome.gate_passed,
        "gate_reasons": list(outcome.gate_reasons),
        "report": outcome.report_html,
        "metrics": outcome.metrics,
    }
    if state == REJECTED:
        return {**summary, "state": REJECTED}
    if state != AWAITING_APPROVAL:  # record_gate writes one of the two; anything else is a bug to surface
        raise RuntimeError(f"request {request.id}: the gate left it {state!r}, not awaiting approval")
    if auto_approve:
        answer = auto_approval()
    else:
        logger.info("request %s: candidate version %s awaits approval", request.id, version)
        answer = wait_for_approval(request.id)
    result = apply_answer(settings, request, answer)
    if revocation_id := result.get("revocation_completed"):  # is the revoked concept back? It samples: a GPU slot
        result["revoked_concept"] = _measure(settings, revocation_id, actor=answer.approver)
    return {
        **summary,
        **result,
        "approver": answer.approver,
        "policy": answer.policy,
        **({"replays": request.replays, "revocation": request.revocation} if request.revocation else {}),
    }


def _measure(settings: LetheSettings, revocation_id: str, *, actor: str) -> dict | None:
    """Measure a completed revocation under the GPU slot. A failure is logged, not raised: the promotion
    stands, and the next drain measures it again (pipeline/revoke.py `unmeasured_revocations`)."""
    try:
        with gpu_held(settings.gpu_slots):
            return measure_revocation(settings, revocation_id, actor)
    except Exception as error:  # noqa: BLE001 - a measurement never undoes an answer
        get_run_logger().warning("measuring revocation %s failed (%s); the next drain retries", revocation_id, error)
        return None


def _where_this_run_waits() -> dict:
    """Recorded with `awaiting-approval`: `lethe approve` resumes this run, or decides directly when its
    process is gone (flows/approval.py)."""
    from prefect.runtime import flow_run

    return {"flow_run_id": str(flow_run.id), "host": socket.gethostname(), "pid": os.getpid()}


@flow(name="continual-unlearning")
def continual_unlearning(
    max_requests: int | None = None, auto_approve: bool = False, unlearn_steps: int | None = None
) -> list[dict]:
    """Drain the queue of the configured lineage: one request at a time, strictly in order.

    One drainer per lineage: the run holds the lineage's concurrency slot while it drains. A run that
    cannot get it within `lineage_wait_seconds` leaves the queue to the holder and returns nothing.
    """
    settings = load_settings()
    results = []
    try:
        with lineage_held(settings.model_name, wait_seconds=settings.lineage_wait_seconds):
            for revocation_id in unmeasured_revocations(settings):  # completed outside a run (`lethe approve`)
                _measure(settings, revocation_id, actor="continual-unlearning")
            while max_requests is None or len(results) < max_requests:
                request = claim_next_request(settings, actor="continual-unlearning")
                if request is None:
                    break
                results.append(_drain_one(settings, request, auto_approve, unlearn_steps))
    except LineageBusy as busy:
        get_run_logger().info("%s; it drains the queue", busy)
    return results


def _drain_one(settings: LetheSettings, request: Request, auto_approve: bool, unlearn_steps: int | None) -> dict:
    try:
        return process_request(request, auto_approve=auto_approve, unlearn_steps=unlearn_steps)
    except Exception as error:  # recorded by process_request; the queue goes on
        # An error before or after process_request's own bookkeeping must not leave the request
        # running either (the next claim would resume it again and again).
        record_failure(
            settings, request.id, failure_message("processing the request", error), actor="continual-unlearning"
        )
        return {
            "id": request.id,
            "concept": request.concept,
            "state": FAILED,
            "error": f"{type(error).__name__}: {error}",
        }
