"""The heavy steps of a request's life as plain functions (no Prefect): Prefect tasks and the CLI are
thin wrappers around them.

`unlearn_and_evaluate` loads the parent (the base, or a registered version, verified: registry/loading.py's
`load_parent`, the same function `lethe unlearn` uses), removes the
request's concept with the one training loop, evaluates the result against the base with the gate
policy, and writes everything under one folder. `register` turns that folder into a candidate version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from registry.loading import load_parent
from registry.versions import Candidate, ModelRegistry
from unlearning.evaluation.cache import ImageCache
from unlearning.evaluation.checks import ShapesJudge, drift, lpips_alex_distance
from unlearning.evaluation.evaluate import evaluate
from unlearning.evaluation.gates import load_policy
from unlearning.evaluation.plan import shapes_plan
from unlearning.evaluation.report import evaluation_payload, write_report
from unlearning.loop import UnlearnConfig, run_unlearning
from unlearning.sampling import load_model
from unlearning.shapes.train import load_detector


@dataclass(frozen=True)
class StepSettings:
    tracking_uri: str
    model_name: str
    artifact_root: str | None
    base_model: str
    cache_dir: Path
    sampler: dict
    policy_path: str | None = None
    unlearn_steps: int | None = None
    eval_samples: int = 6
    checkpoint_every: int | None = None  # None: the loop's default


def flatten_metrics(checks: dict, prefix: str = "") -> dict[str, float]:
    """Every number in the checks as one flat dict ("forget.gate.ua": 0.97, ...), for MLflow metrics."""
    flat = {}
    for key, value in checks.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            flat[name] = float(value)
    return flat


def unlearn_and_evaluate(settings: StepSettings, *, request_id: str, request: dict, parent_version: int | None,
                         erased_before: list[str], out_dir: Path, progress: bool = False) -> dict:
    """Train and evaluate one request; returns small values (paths, metrics, the gate decision)."""
    config = UnlearnConfig(
        concept=request["concept"], synonyms=tuple(request.get("synonyms", ())), anchor=request.get("anchor") or None,
        preserve=tuple(request.get("preserve", ())), erased=tuple(erased_before), method=request.get("method", "duge"),
        **({"steps": settings.unlearn_steps} if settings.unlearn_steps is not None else {}),
        **({"checkpoint_every": settings.checkpoint_every} if settings.checkpoint_every is not None else {}),
    )
    source = settings.base_model if parent_version is None else f"models:/{settings.model_name}/{parent_version}"
    with tempfile.TemporaryDirectory(prefix="lethe-parent-") as tmp:
        loaded = load_parent(source, tracking_uri=settings.tracking_uri, workdir=Path(tmp), base_model=settings.base_model)
    parent, base, base_sha = loaded.pipe, load_model(loaded.base_model), loaded.base_sha256
    base_values = {k: v.clone() for k, v in base.unet.state_dict().items()}
    summary = run_unlearning(parent, config, out_dir / "train", model_sha=loaded.identity, base_values=base_values,
                             cache_dir=settings.cache_dir / "latents", progress=progress,
                             metadata={"request_id": request_id, "base_model": settings.base_model, "base_sha256": base_sha})
    plan = shapes_plan(config.concept, synonyms=config.synonyms, erased=config.erased, samples=settings.eval_samples)
    with torch.no_grad():
        drift_value = drift(parent.unet, base.unet)
    evaluation = evaluate(parent, base, ShapesJudge(load_detector()), plan, sampler=settings.sampler, base_sha256=base_sha,
                          cache=ImageCache(settings.cache_dir / "images"), policy=load_policy(settings.policy_path),
                          drift_value=drift_value, lpips_distance=lpips_alex_distance())
    report_html = write_report(evaluation, out_dir / "report", title=f"Request {request_id}: erase {config.concept}")
    payload = evaluation_payload(evaluation)
    return {
        "delta": str(out_dir / "train" / "delta.safetensors"),
        "report_dir": str(out_dir / "report"),
        "report_html": str(report_html),
        "metrics": flatten_metrics(payload["checks"]),
        "gate_passed": evaluation.decision.passed,
        "gate_reasons": evaluation.decision.reasons,
        "gate_table": [c.__dict__ for c in evaluation.decision.checks],
        "erased": [*erased_before, config.concept],
        "params": {"method": config.method, "params": config.params, "steps": config.steps, "lr": config.lr,
                   "batch_size": config.batch_size, "seed": config.seed, "train_seconds": summary["seconds"]},
        "base_sha256": base_sha,
        "resumed_from_step": summary["resumed_from_step"],  # > 0: training went on from a checkpoint
    }


def register(settings: StepSettings, *, request_id: str, request: dict, parent_version: int | None, outcome: dict) -> int:
    """Register the outcome as a candidate version (idempotent per request id)."""
    registry = ModelRegistry(settings.tracking_uri, settings.model_name, settings.artifact_root)
    return registry.register_candidate(Candidate(
        request_id=request_id, request=request, delta_path=Path(outcome["delta"]), parent_version=parent_version,
        erased=outcome["erased"], base_model=settings.base_model, base_sha256=outcome["base_sha256"],
        params=outcome["params"], metrics=outcome["metrics"], gate_passed=outcome["gate_passed"],
        gate_reasons=outcome["gate_reasons"], report_dir=Path(outcome["report_dir"]),
    ))


def _bound(check: dict) -> str:
    parts = [f"≥ {check['min']}" if check["min"] is not None else "", f"≤ {check['max']}" if check["max"] is not None else ""]
    return " ".join(p for p in parts if p)


def gate_markdown(request_id: str, outcome: dict, version: int | None) -> str:
    """The gate table as Markdown (a Prefect artifact of every request run)."""
    lines = []
    for check in outcome["gate_table"]:
        value = "—" if check["value"] is None else f"{check['value']:.4f}"
        verdict = "pass" if check["passed"] else "**FAIL**"
        lines.append(f"| {check['metric']} | {value} | {_bound(check)} | {verdict} |")
    verdict = "passed" if outcome["gate_passed"] else "FAILED: " + "; ".join(outcome["gate_reasons"])
    return (f"# Request {request_id}\n\nCandidate version: {version}\n\nGate: {verdict}\n\n"
            f"| metric | value | bound | verdict |\n|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
            f"Report: `{outcome['report_html']}`\n\nErased so far: {json.dumps(outcome['erased'])}\n")
