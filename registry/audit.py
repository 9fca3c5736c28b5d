"""The erosion audit as plain functions (no Prefect; DESIGN.md, "Orchestration").

Every request's gate judged its candidate once. The audit re-judges what is actually serving: the
`production` version, loaded and verified like any consumer loads it, evaluated against the base on
every concept it erased (rebound: is each still gone?) and on the retain set (did anything else erode?),
with the same gate policy. The outcome is written where people look: a report folder, a tag on the
model version, and an event in the ledger's append-only audit table.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import torch

from registry.ledger import Ledger
from registry.loading import load_pipeline
from registry.steps import StepSettings, flatten_metrics
from registry.versions import ModelRegistry, with_retries
from unlearning.evaluation.cache import ImageCache
from unlearning.evaluation.checks import ShapesJudge, drift, lpips_alex_distance
from unlearning.evaluation.evaluate import evaluate
from unlearning.evaluation.gates import Policy, load_policy
from unlearning.evaluation.plan import shapes_plan
from unlearning.evaluation.report import write_report
from unlearning.sampling import load_model, model_identity
from unlearning.shapes.train import load_detector

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
    return Policy(f"{policy.name} (audit)", tuple(t for t in policy.thresholds if not t.metric.startswith(NOT_AUDITED)))


def audit_version(settings: StepSettings, *, version: int, out_dir: Path) -> dict:
    """Evaluate registered `version` against its base; write the report; return the outcome (small values).

    Raises:
        IntegrityError: a tampered artifact or a base whose sha256 differs (the version cannot be judged).
        PolicyError: a malformed policy file.
    """
    policy = audit_policy(load_policy(settings.policy_path))  # a malformed policy fails before any sampling
    model = load_pipeline(f"models:/{settings.model_name}/{version}", tracking_uri=settings.tracking_uri)
    erased, base_model = list(model.lethe_version["erased"]), model.lethe_version["base_model"]
    _, base_sha = model_identity(base_model)
    base = load_model(base_model)
    plan = shapes_plan(None, erased=tuple(erased), samples=settings.eval_samples)
    with torch.no_grad():
        drift_value = drift(model.unet, base.unet)
    evaluation = evaluate(model, base, ShapesJudge(load_detector()), plan, sampler=settings.sampler, base_sha256=base_sha,
                          cache=ImageCache(settings.cache_dir / "images"), policy=policy, drift_value=drift_value,
                          lpips_distance=lpips_alex_distance())
    decision = evaluation.decision
    result = {
        "model_name": settings.model_name, "version": version, "erased": erased,
        "state": PASSED if decision.passed else FAILED, "passed": decision.passed, "reasons": decision.reasons,
        "policy": policy.name, "checks": [c.__dict__ for c in decision.checks],
        "metrics": flatten_metrics({k: v for k, v in evaluation.results.items() if k != "groups"}),
        "audited_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "report_dir": str(out_dir), "report_html": str(out_dir / "report.html"), "report_json": str(out_dir / "audit.json"),
    }
    write_report(evaluation, out_dir, title=f"Erosion audit of {settings.model_name} version {version}",
                 extra={"audit": {k: result[k] for k in ("model_name", "version", "erased", "state", "policy", "audited_at")}})
    (out_dir / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def mark_audit(settings: StepSettings, ledger_url: str, result: dict) -> None:
    """Record the outcome on the model version (tags) and in the ledger's audit table."""
    registry = ModelRegistry(settings.tracking_uri, settings.model_name, settings.artifact_root)
    tags = {TAG_AUDIT: result["state"], TAG_AUDIT_REASONS: json.dumps(result["reasons"])[:4000],
            TAG_AUDIT_AT: result["audited_at"], TAG_AUDIT_REPORT: result["report_html"]}
    for key, value in tags.items():
        with_retries(lambda key=key, value=value: registry.client.set_model_version_tag(
            settings.model_name, str(result["version"]), key, value), what=f"tag version {result['version']}")
    Ledger(ledger_url).record_event(LEDGER_EVENT[result["state"]], actor=AUDIT_ACTOR, detail={
        "lineage": settings.model_name, "version": result["version"], "erased": result["erased"],
        "reasons": result["reasons"], "report": result["report_html"],
    })


def audit_markdown(result: dict) -> str:
    """The audit's checks as Markdown (a Prefect artifact of every audit run)."""
    rows = []
    for check in result["checks"]:
        value = "—" if check["value"] is None else f"{check['value']:.4f}"
        bound = " ".join(p for p in (f"≥ {check['min']}" if check["min"] is not None else "",
                                     f"≤ {check['max']}" if check["max"] is not None else "") if p)
        rows.append(f"| {check['metric']} | {value} | {bound} | {'pass' if check['passed'] else '**FAIL**'} |")
    verdict = "passed" if result["passed"] else "FAILED: " + "; ".join(result["reasons"])
    return (f"# Erosion audit of {result['model_name']} version {result['version']}\n\n"
            f"Erased: {json.dumps(result['erased'])}\n\nAudit: {verdict}\n\n"
            "| metric | value | bound | verdict |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"Report: `{result['report_html']}`\n")
