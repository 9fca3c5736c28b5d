"""Thin Prefect tasks of the erosion audit (pipeline/audit.py does the work)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from pipeline import audit
from pipeline.settings import LetheSettings


@task(name="audit-production")
def audit_production(settings: LetheSettings, version: int, report_dir: str) -> dict:
    return audit.audit_version(settings, version=version, out_dir=Path(report_dir))


@task(name="record-audit")
def record_audit(settings: LetheSettings, result: dict) -> None:
    audit.mark_audit(settings, result)
