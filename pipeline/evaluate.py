"""Evaluate: a candidate judged against the base with the one evaluator (pipeline/evaluator.py).

`evaluate_model` plans the checks for a target, its synonyms and the lineage's erased concepts (rebound),
evaluates, and writes the report. A request's step calls it through pipeline/unlearn.py
`unlearn_and_evaluate`; `judged_key` names what an evaluation of a delta depends on, so one that finished
before for the same delta, policy and sampler is not repeated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from pipeline.evaluator import Evaluator
from unlearning.evaluation.evaluate import Evaluation
from unlearning.files import sha256_file

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


def judged_key(evaluator: Evaluator, delta: Path) -> str:
    """What an evaluation of this delta depends on: the delta, the policy, the sampler, the plan's size."""
    policy = None if evaluator.policy is None else [asdict(t) for t in evaluator.policy.thresholds]
    key = {"delta": sha256_file(delta), "policy": policy, "sampler": evaluator.sampler, "size": asdict(evaluator.size)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
