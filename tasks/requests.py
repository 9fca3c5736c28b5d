"""Thin Prefect tasks, each one call of a step of pipeline/ (the steps are plain, tested functions).

Each returns small values (a Request, a Parent, an Outcome, a version number, a state). Retries live in
one layer only, the registry's I/O (registry/versions.py `with_retries`): no Prefect retries here, so a
flaky MLflow call is tried a bounded number of times, not that number squared. Training is never
retried blindly: a stopped request is resumed by the next drain (its checkpoint, its finished steps).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from pipeline import claim, decide, register, revoke, unlearn
from pipeline.settings import LetheSettings
from pipeline.values import Answer, Outcome, Parent
from registry.requests import Request


@task(name="claim-next-request")
def claim_next_request(settings: LetheSettings, actor: str) -> Request | None:
    return claim.claim_next(settings, actor=actor)


@task(name="production-version")
def production_version(settings: LetheSettings) -> Parent:
    return claim.production_parent(settings)


@task(name="parent-version")
def parent_version(settings: LetheSettings, request: Request) -> Parent:
    return claim.parent_for(settings, request)


@task(name="unlearn-and-evaluate", tags=["gpu"])
def unlearn_and_evaluate_request(settings: LetheSettings, request: Request, parent: Parent, work_dir: str) -> Outcome:
    return unlearn.unlearn_and_evaluate_request(settings, request, parent, Path(work_dir))


@task(name="register-candidate")
def register_candidate(settings: LetheSettings, request: Request, parent: Parent, outcome: Outcome) -> int:
    return register.register(settings, request, parent, outcome)


@task(name="record-gate")
def record_gate(
    settings: LetheSettings,
    request: Request,
    parent: Parent,
    outcome: Outcome,
    version: int,
    waiting: dict | None = None,
) -> str:
    return decide.record_gate(settings, request.id, parent, outcome, version, waiting=waiting)


@task(name="apply-answer")
def apply_answer(settings: LetheSettings, request: Request, answer: Answer) -> dict:
    return decide.apply_answer(settings, request.id, answer)


@task(name="measure-revocation", tags=["gpu"])
def measure_revocation(settings: LetheSettings, revocation_id: str, actor: str) -> dict:
    return revoke.measure_revocation(settings, revocation_id, actor=actor)


@task(name="unmeasured-revocations")
def unmeasured_revocations(settings: LetheSettings) -> list[str]:
    return revoke.unmeasured_revocations(settings)


@task(name="record-failure")
def record_failure(settings: LetheSettings, request_id: str, error: str, actor: str) -> bool:
    return decide.record_failure(settings, request_id, error=error, actor=actor)
