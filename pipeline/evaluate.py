"""Evaluate: the candidate judged against the base with the one evaluator (pipeline/evaluator.py).

For a request, the candidate is its parent plus the delta just trained, compared with the base on the
evaluator's plan for the request's target, synonyms and the lineage's erased concepts (rebound). The
gate's decision, the report and every number are written under the request's folder, and the small
values come back as an `Outcome`. An evaluation that finished before for the same delta, policy and
sampler is not repeated (`outcome.json` records what it judged).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from pipeline.evaluator import Evaluator, flatten_metrics
from pipeline.prepare import load_parent_model, unlearn_config
from pipeline.settings import LetheSettings
from pipeline.values import Outcome, Parent
from unlearning.evaluation.evaluate import Evaluation
from unlearning.files import sha256_file, write_json
from unlearning.loop import LINEAGE_FILE
from unlearning.sampling import load_model

OUTCOME_FILE = "outcome.json"


def evaluate_model(
    evaluator: Evaluator,
    candidate,
    base,
    *,
    base_sha256: str,
    target: str | None,
    synonyms: tuple[str, ...] = (),
    erased: tuple[str, ...] = (),
    report_dir: Path,
    title: str,
    extra: dict | None = None,
) -> tuple[Evaluation, dict]:
    """Evaluate any candidate against its base and write the report; returns (evaluation, payload)."""
    plan = evaluator.plan(target, synonyms=synonyms, erased=erased)
    evaluation = evaluator.evaluate(candidate, base, plan, base_sha256=base_sha256)
    _, payload = evaluator.report(evaluation, report_dir, title=title, extra=extra)
    return evaluation, payload


def _judged(evaluator: Evaluator, delta: Path) -> str:
    """What an evaluation of this delta depends on: the delta, the policy, the sampler, the plan's size."""
    policy = None if evaluator.policy is None else [asdict(t) for t in evaluator.policy.thresholds]
    key = {"delta": sha256_file(delta), "policy": policy, "sampler": evaluator.sampler, "size": asdict(evaluator.size)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def evaluate_request(settings: LetheSettings, request, parent: Parent, work_dir: Path) -> Outcome:
    """Judge the request's candidate (its trained delta under `work_dir/train`); returns the Outcome."""
    evaluator = Evaluator.from_settings(settings)
    delta = work_dir / "train" / "delta.safetensors"
    judged = _judged(evaluator, delta)
    if (work_dir / OUTCOME_FILE).is_file():
        recorded = json.loads((work_dir / OUTCOME_FILE).read_text())
        if recorded.get("judged") == judged:
            return Outcome.from_dict(recorded["outcome"])
    config = unlearn_config(settings, request, parent)
    summary = json.loads((work_dir / "train" / "summary.json").read_text())
    candidate = load_parent_model(
        settings, parent.source(settings.model_name, settings.base_model), extra_deltas=(delta,)
    )
    base = load_model(candidate.base_model)
    evaluation, payload = evaluate_model(
        evaluator,
        candidate.pipe,
        base,
        base_sha256=candidate.base_sha256,
        target=config.concept,
        synonyms=config.synonyms,
        erased=config.erased,
        report_dir=work_dir / "report",
        title=f"Request {request.id}: erase {config.concept}",
    )
    decision = evaluation.decision
    outcome = Outcome(
        request_id=request.id,
        delta=str(delta),
        report_dir=str(work_dir / "report"),
        report_html=str(work_dir / "report" / "report.html"),
        metrics=flatten_metrics(payload["checks"]),
        gate_passed=decision.passed,
        gate_reasons=tuple(decision.reasons),
        gate_checks=tuple(decision.checks),
        erased=(*parent.erased, config.concept),
        params={
            "method": config.method,
            "params": config.params,
            "steps": config.steps,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "train_seconds": summary["seconds"],
        },
        base_sha256=candidate.base_sha256,
        resumed_from_step=summary.get("resumed_from_step", 0),
        extra_files={LINEAGE_FILE: str(lineage)} if (lineage := work_dir / "train" / LINEAGE_FILE).is_file() else {},
    )
    write_json(work_dir / OUTCOME_FILE, {"judged": judged, "outcome": outcome.as_dict()})
    return outcome
