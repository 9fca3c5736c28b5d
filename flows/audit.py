"""The `erosion-audit` flow (scheduled; docs/design.md, "Orchestration").

    production version → re-evaluate it against the base (every erased concept, the retain set, the
    gate policy) → report → mark the version and the ledger → on failure, a `lethe.audit.failed` event.

A failed audit is an outcome, like a failed gate: the flow completes and says so; the event is what
alerting automations listen to. The audit never moves `production` (a person decides: rollback).
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from flows.concurrency import gpu_held
from flows.events import AUDIT_FAILED, lineage_resource
from pipeline.markdown import audit_markdown
from pipeline.settings import load_settings
from tasks.audit import audit_production, record_audit
from tasks.requests import production_version


@flow(name="erosion-audit")
def erosion_audit() -> dict:
    """Audit the lineage's `production` version; returns the outcome (state passed/failed/nothing-to-audit)."""
    logger = get_run_logger()
    settings = load_settings()
    production = production_version(settings)
    if production.version is None:
        logger.info("%s has no production version: nothing to audit", settings.model_name)
        return {"model_name": settings.model_name, "version": None, "state": "nothing-to-audit", "passed": True}
    version = production.version
    report_dir = settings.home / "reports" / f"audit-{settings.model_name}-v{version}-{time.strftime('%Y%m%d-%H%M%S')}"

    with gpu_held(settings.gpu_slots):  # sampling hundreds of images is GPU work too
        result = audit_production(settings, version, str(report_dir))
    record_audit(settings, result)
    create_markdown_artifact(
        audit_markdown(result),
        key=f"erosion-audit-{settings.model_name}".lower()[:60].replace("_", "-").replace(".", "-"),
        description=f"erosion audit of {settings.model_name} version {version}",
    )
    if not result["passed"]:
        logger.error("version %s failed its erosion audit: %s", version, "; ".join(result["reasons"]))
        emit_event(
            AUDIT_FAILED,
            resource=lineage_resource(settings.model_name, **{"lethe.version": str(version)}),
            payload={
                "version": version,
                "erased": result["erased"],
                "reasons": result["reasons"],
                "report": result["report_html"],
            },
        )
    return result
