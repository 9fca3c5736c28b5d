"""The erosion audit as plain functions (no Prefect; docs/design.md, "Orchestration").

Every request's gate judged its candidate once. The audit re-judges what is actually serving: the
`production` version, loaded and verified like any consumer loads it, evaluated against the base on
every concept it erased (rebound: is each still gone?) and on the retain set (did anything else erode?),
with the same gate policy. The outcome is written where people look: a report folder, a tag on the
model version, and an event in the ledger's append-only audit table.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from pipeline.claim import registry_for
from pipeline.evaluator import Evaluator, flatten_metrics
from pipeline.prepare import load_parent_model
from pipeline.settings import LetheSettings
from pipeline.world import world_for
from registry.ledger import Ledger
from registry.retries import with_retries
from unlearning.evaluation.gates import Policy
from unlearning.files import write_json
from unlearning.open_plan import LineageConcepts
from unlearning.sampling import load_model

PASSED, FAILED = "passed", "failed"
TAG_AUDIT = "lethe.audit"  # "passed" or "failed": the latest audit of this version
TAG_AUDIT_REASONS = "lethe.audit_reasons"  # JSON list of the failed checks
TAG_AUDIT_AT = "lethe.audit_at"
TAG_AUDIT_REPORT = "lethe.audit_report"
LEDGER_EVENT = {PASSED: "audit-passed", FAILED: "audit-failed"}
AUDIT_ACTOR = "erosion-audit"

# Metrics a request's gate measures and an audit cannot: an audit has no target, so there is no
# forget check (its erased concepts are all rebound checks) and no in-domain group (every retained
# concept is judged under retain.cra and retain.per_concept).
NOT_AUDITED = ("forget.", "retain.ira.")


def audit_policy(policy: Policy) -> Policy:
    """The gate policy as an audit applies it: the same thresholds, less those on `NOT_AUDITED`."""
    kept = tuple(t for t in policy.thresholds if not t.metric.startswith(NOT_AUDITED))
    return Policy(f"{policy.name} (audit)", kept, policy.alpha)


def audit_version(settings: LetheSettings, *, version: int, out_dir: Path) -> dict:
    """Evaluate registered `version` against its base; write the report; return the outcome (small values).

    Raises:
        IntegrityError: a tampered artifact or a base whose sha256 differs (the version cannot be judged).
        PolicyError: a malformed policy file.
    """
    evaluator = Evaluator.from_settings(settings)  # a malformed policy fails before any sampling
    evaluator.policy = policy = audit_policy(evaluator.policy)
    model = load_parent_model(settings, f"models:/{settings.model_name}/{version}")
    erased = list(model.erased)
    # the version's erased concepts are the classes an open world's judge must name (the shapes world knows its own)
    evaluator.world = world_for(settings, LineageConcepts(erased=tuple(erased)))
    base = load_model(model.base_model)
    plan = evaluator.plan(None, erased=tuple(erased))
    evaluation = evaluator.evaluate(model.pipe, base, plan, base_sha256=model.base_sha256)
    decision = evaluation.decision
    result = {
        "model_name": settings.model_name,
        "version": version,
        "erased": erased,
        "state": PASSED if decision.passed else FAILED,
        "passed": decision.passed,
        "reasons": decision.reasons,
        "policy": policy.name,
        "checks": [c.__dict__ for c in decision.checks],
        "metrics": flatten_metrics({k: v for k, v in evaluation.results.items() if k != "groups"}),
        "audited_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "report_dir": str(out_dir),
        "report_html": str(out_dir / "report.html"),
        "report_json": str(out_dir / "audit.json"),
    }
    evaluator.report(
        evaluation,
        out_dir,
        title=f"Erosion audit of {settings.model_name} version {version}",
        extra={"audit": {k: result[k] for k in ("model_name", "version", "erased", "state", "policy", "audited_at")}},
    )
    write_json(out_dir / "audit.json", result)
    return result


def mark_audit(settings: LetheSettings, result: dict) -> None:
    """Record the outcome on the model version (tags) and in the ledger's audit table."""
    registry = registry_for(settings)
    tags = {
        TAG_AUDIT: result["state"],
        TAG_AUDIT_REASONS: json.dumps(result["reasons"])[:4000],
        TAG_AUDIT_AT: result["audited_at"],
        TAG_AUDIT_REPORT: result["report_html"],
    }
    for key, value in tags.items():
        with_retries(
            lambda key=key, value=value: registry.client.set_model_version_tag(
                settings.model_name, str(result["version"]), key, value
            ),
            what=f"tag version {result['version']}",
        )
    Ledger(settings.ledger_url).record_event(
        LEDGER_EVENT[result["state"]],
        actor=AUDIT_ACTOR,
        detail={
            "lineage": settings.model_name,
            "version": result["version"],
            "erased": result["erased"],
            "reasons": result["reasons"],
            "report": result["report_html"],
        },
    )
