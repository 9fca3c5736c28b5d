"""Prefect flows that drain the request queue, one lineage at a time (DESIGN.md, "Orchestration").

    continual_unlearning: claim the head request → process_request → repeat until the queue is empty.
    process_request:      production (parent) → unlearn + evaluate → register candidate → gate
                          → approval (a person through `pause_flow_run`, or the auto-approval policy)
                          → promote or reject.

Every outcome is written to the ledger (the system of record) before the flow moves on; a failed
gate or a rejection never moves `production`, and the queue goes on from the unchanged version.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from flows.concurrency import LineageBusy, gpu_held, lineage_held
from flows.settings import LetheSettings, load_settings
from registry import steps
from tasks.requests import (
    AWAITING_APPROVAL,
    FAILED,
    REJECTED,
    apply_decision,
    claim_head_request,
    fail_if_running,
    production_version,
    record_state,
    register_candidate,
    unlearn_and_evaluate,
)

AUTO_APPROVER = "auto-approval-policy"
APPROVAL_TIMEOUT_SECONDS = 7 * 24 * 3600


class ApprovalInput(RunInput):
    """The approval form shown in the Prefect UI (and sent by `lethe approve`)."""

    approve: bool
    approver: str
    comment: str = ""


def step_settings(settings: LetheSettings, *, unlearn_steps: int | None = None) -> steps.StepSettings:
    return steps.StepSettings(
        tracking_uri=settings.mlflow_tracking_uri, model_name=settings.model_name, artifact_root=settings.artifact_root,
        base_model=settings.base_model, cache_dir=settings.home / "cache",
        sampler={"scheduler": "ddim", "steps": settings.sample_steps, "guidance_scale": settings.guidance_scale},
        policy_path=settings.policy, unlearn_steps=settings.unlearn_steps if unlearn_steps is None else unlearn_steps,
        checkpoint_every=settings.checkpoint_every,
        eval_samples=settings.eval_samples,
    )


@flow(name="process-request", flow_run_name="request-{request[id]}")
def process_request(request: dict, auto_approve: bool = False, unlearn_steps: int | None = None) -> dict:
    """One request's life: parent → unlearn → evaluate → register → gate → approval → promote/reject."""
    logger = get_run_logger()
    settings = load_settings()
    config = step_settings(settings, unlearn_steps=unlearn_steps)
    request_id = request["id"]

    parent = production_version(config)
    logger.info("request %s: erase %r from version %s", request_id, request["concept"], parent["version"])
    try:
        with gpu_held(settings.gpu_slots):
            outcome = unlearn_and_evaluate(config, request, parent, str(settings.home / "requests" / request_id))
        version = register_candidate(config, request, parent, outcome)
    except Exception as error:  # the ledger must say why (never left running), then the flow fails
        record_state(settings.ledger_url, request_id, FAILED, actor="flow", error=f"{type(error).__name__}: {error}")
        raise
    create_markdown_artifact(steps.gate_markdown(request_id, outcome, version), key=f"gate-{request_id.lower()}"[:60].replace("_", "-").replace(".", "-"),
                             description=f"gate of request {request_id}")
    summary = {"id": request_id, "concept": request["concept"], "parent_version": parent["version"],
               "candidate_version": version, "resumed_from_step": outcome["resumed_from_step"], "gate_passed": outcome["gate_passed"], "gate_reasons": outcome["gate_reasons"],
               "report": outcome["report_html"], "metrics": {k: outcome["metrics"][k] for k in sorted(outcome["metrics"]) if k.startswith(("forget.", "retain.ira", "retain.cra", "rebound", "retention.distance", "fid.fid", "drift"))}}
    if not outcome["gate_passed"]:
        record_state(settings.ledger_url, request_id, REJECTED, actor="gate", candidate_version=version,
                     parent_version=parent["version"], error="gate failed: " + "; ".join(outcome["gate_reasons"]))
        return {**summary, "state": REJECTED}
    from prefect.runtime import flow_run

    # `lethe approve` resumes this run; where it runs tells `lethe approve` when the run died with its process
    waiting = {} if auto_approve else {"flow_run_id": str(flow_run.id), "host": socket.gethostname(), "pid": os.getpid()}
    record_state(settings.ledger_url, request_id, AWAITING_APPROVAL, actor="flow", candidate_version=version,
                 parent_version=parent["version"], detail=waiting)

    approvers = list(settings.approvers)
    if auto_approve:
        decision = {"approve": True, "approver": AUTO_APPROVER, "comment": "auto-approval policy (embedded demo)"}
        approvers.append(AUTO_APPROVER)
    else:
        logger.info("request %s: candidate version %s awaits approval", request_id, version)
        answer = pause_flow_run(wait_for_input=ApprovalInput.with_initial_data(approve=True, approver=""),
                                timeout=APPROVAL_TIMEOUT_SECONDS, key=f"approval-{request_id}")
        decision = {"approve": answer.approve, "approver": answer.approver, "comment": answer.comment}
    result = apply_decision(config, settings.ledger_url, request_id, decision, approvers)
    return {**summary, **result, "approver": decision["approver"]}


@flow(name="continual-unlearning")
def continual_unlearning(max_requests: int | None = None, auto_approve: bool = False, unlearn_steps: int | None = None) -> list[dict]:
    """Drain the queue of the configured lineage: one request at a time, strictly in order.

    One drainer per lineage: the run holds the lineage's concurrency slot while it drains. A run that
    cannot get it within `lineage_wait_seconds` leaves the queue to the holder and returns nothing.
    """
    settings = load_settings()
    results = []
    try:
        with lineage_held(settings.model_name, wait_seconds=settings.lineage_wait_seconds):
            while max_requests is None or len(results) < max_requests:
                request = claim_head_request(settings.ledger_url, settings.model_name, actor="continual-unlearning")
                if request is None:
                    break
                try:
                    results.append(process_request(request, auto_approve=auto_approve, unlearn_steps=unlearn_steps))
                except Exception as error:  # recorded by process_request; the queue goes on
                    # An error before or after process_request's own bookkeeping must not leave the
                    # request running either (the next claim would resume it again and again).
                    fail_if_running(settings.ledger_url, request["id"], actor="continual-unlearning",
                                    error=f"{type(error).__name__}: {error}")
                    results.append({"id": request["id"], "concept": request["concept"], "state": FAILED, "error": str(error)})
    except LineageBusy as busy:
        get_run_logger().info("%s; it drains the queue", busy)
    return results


def results_dir(home: Path) -> Path:
    return home / "requests"
