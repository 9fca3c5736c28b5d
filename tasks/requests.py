"""Thin Prefect tasks around the ledger, the registry and the heavy steps (registry/steps.py).

Each is a few lines; each returns small values (ids, version numbers, metric dicts, decisions).
Retries only where the work is I/O against MLflow/S3 (registration, promotion); training is never
retried blindly — a crashed training resumes from its checkpoint when the request is run again.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from registry import governance, steps
from registry.ledger import AWAITING_APPROVAL, FAILED, REJECTED, RUNNING, Ledger, StateConflict
from registry.versions import PRODUCTION, ModelRegistry


@task(name="claim-head-request")
def claim_head_request(ledger_url: str, lineage: str, actor: str) -> dict | None:
    """Resume a request a stopped run left running (or fail it, after too many), else claim the head."""
    ledger = Ledger(ledger_url)
    if (stranded := ledger.resume_stranded(lineage, actor=actor)) is not None:
        return stranded.as_dict()
    request = ledger.claim_head(lineage, actor=actor)
    return request.as_dict() if request else None


@task(name="production-version", retries=3, retry_delay_seconds=[1, 4, 10])
def production_version(settings: steps.StepSettings) -> dict:
    registry = ModelRegistry(settings.tracking_uri, settings.model_name, settings.artifact_root)
    version = registry.alias_version(PRODUCTION)  # None when the lineage has no version yet
    return {"version": version, "erased": registry.erased_in(version)}


@task(name="unlearn-and-evaluate", tags=["gpu"])
def unlearn_and_evaluate(settings: steps.StepSettings, request: dict, parent: dict, work_dir: str) -> dict:
    return steps.unlearn_and_evaluate(settings, request_id=request["id"], request={**request["body"], "requester": request["requester"]},
                                      parent_version=parent["version"], erased_before=parent["erased"], out_dir=Path(work_dir))


@task(name="register-candidate", retries=3, retry_delay_seconds=[2, 8, 30])
def register_candidate(settings: steps.StepSettings, request: dict, parent: dict, outcome: dict) -> int:
    return steps.register(settings, request_id=request["id"], request={**request["body"], "requester": request["requester"]},
                          parent_version=parent["version"], outcome=outcome)


@task(name="record-state")
def record_state(ledger_url: str, request_id: str, state: str, actor: str, **fields) -> str:
    Ledger(ledger_url).transition(request_id, state, actor=actor, **fields)
    return state


@task(name="fail-if-running")
def fail_if_running(ledger_url: str, request_id: str, actor: str, error: str) -> bool:
    """Mark a request failed if its flow ended in an error and left it running; True if it did."""
    try:
        Ledger(ledger_url).transition(request_id, FAILED, actor=actor, expected=RUNNING, error=error)
    except StateConflict:  # already failed, rejected or awaiting approval: the flow recorded its outcome
        return False
    return True


@task(name="apply-decision", retries=2, retry_delay_seconds=[2, 10])
def apply_decision(settings: steps.StepSettings, ledger_url: str, request_id: str, decision: dict, approvers: list[str]) -> dict:
    """Approve (promote) or reject, under the governance rules, whoever answered."""
    ledger = Ledger(ledger_url)
    registry = ModelRegistry(settings.tracking_uri, settings.model_name, settings.artifact_root)
    if decision["approve"]:
        version = governance.approve(ledger, registry, request_id, approver=decision["approver"], approvers=approvers,
                                     comment=decision.get("comment", ""))
        return {"state": "promoted", "production_version": version}
    governance.reject(ledger, registry, request_id, approver=decision["approver"], approvers=approvers,
                      reason=decision.get("comment") or "rejected")
    return {"state": REJECTED}


__all__ = ["claim_head_request", "fail_if_running", "production_version", "unlearn_and_evaluate", "register_candidate", "record_state",
           "apply_decision", "AWAITING_APPROVAL", "FAILED", "REJECTED"]
