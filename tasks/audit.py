"""Thin Prefect tasks of the erosion audit (registry/audit.py does the work)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from registry import audit, steps


@task(name="audit-production")
def audit_production(settings: steps.StepSettings, version: int, report_dir: str) -> dict:
    return audit.audit_version(settings, version=version, out_dir=Path(report_dir))


@task(name="record-audit", retries=3, retry_delay_seconds=[1, 4, 10])
def record_audit(settings: steps.StepSettings, ledger_url: str, result: dict) -> None:
    audit.mark_audit(settings, ledger_url, result)
