"""Gates: a policy of thresholds (data) and one pure function that decides.

A policy is a YAML file with a list of thresholds; each names a metric by its dotted path in the
results of `run_checks` ("forget.gate.ua", "retain.per_concept.*.relative" — `*` checks every key
there) and a bound: `min` and/or `max`. A missing metric fails the gate unless `optional: true`
(e.g. rebound when nothing was erased earlier). A failed gate is a Decision with reasons, never an
exception; only a malformed policy raises (PolicyError), at load time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_POLICY = Path(__file__).with_name("shapes_policy.yaml")


class PolicyError(ValueError):
    """The policy file is malformed; the message names each problem."""


@dataclass(frozen=True)
class Threshold:
    metric: str
    min: float | None = None
    max: float | None = None
    optional: bool = False
    why: str = ""


@dataclass(frozen=True)
class Policy:
    name: str
    thresholds: tuple[Threshold, ...]


@dataclass(frozen=True)
class CheckOutcome:
    metric: str
    value: float | None
    min: float | None
    max: float | None
    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": self.reasons, "checks": [c.__dict__ for c in self.checks]}


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate a policy file (default: the shapes-world policy shipped here).

    Raises:
        PolicyError: missing file, malformed YAML, unknown keys, or a threshold without a bound.
    """
    path = Path(path) if path else DEFAULT_POLICY
    if not path.is_file():
        raise PolicyError(f"{path}: no such policy file")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise PolicyError(f"{path}: malformed YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("thresholds"), list):
        raise PolicyError(f"{path}: expected a mapping with a 'thresholds' list")
    problems, thresholds = [], []
    for i, entry in enumerate(document["thresholds"], start=1):
        if not isinstance(entry, dict):
            problems.append(f"threshold {i}: not a mapping")
            continue
        unknown = set(entry) - {"metric", "min", "max", "optional", "why"}
        if unknown:
            problems.append(f"threshold {i}: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(entry.get("metric"), str) or not entry["metric"]:
            problems.append(f"threshold {i}: 'metric' must be a dotted path")
        bounds = {k: entry.get(k) for k in ("min", "max")}
        if all(v is None for v in bounds.values()):
            problems.append(f"threshold {i}: needs 'min' or 'max'")
        for key, value in bounds.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                problems.append(f"threshold {i}: '{key}' must be a number")
        if not problems:
            thresholds.append(
                Threshold(
                    entry["metric"],
                    entry.get("min"),
                    entry.get("max"),
                    bool(entry.get("optional", False)),
                    str(entry.get("why", "")),
                )
            )
    if problems:
        raise PolicyError(f"{path}: " + "; ".join(problems))
    return Policy(str(document.get("name", path.stem)), tuple(thresholds))


def _lookup(results: dict, path: str) -> list[tuple[str, object]]:
    """Values at a dotted path; `*` expands over the keys of a mapping."""
    found = [("", results)]
    for part in path.split("."):
        expanded = []
        for prefix, node in found:
            if not isinstance(node, dict):
                continue
            keys = sorted(node) if part == "*" else ([part] if part in node else [])
            expanded += [(f"{prefix}.{k}" if prefix else k, node[k]) for k in keys]
        found = expanded
    return found


def decide(results: dict, policy: Policy) -> Decision:
    """Check every threshold; pass only if all hold. Pure: same inputs, same decision."""
    outcomes, reasons = [], []
    for threshold in policy.thresholds:
        values = _lookup(results, threshold.metric)
        if not values:
            if threshold.optional:
                continue
            outcome = CheckOutcome(
                threshold.metric, None, threshold.min, threshold.max, False, f"{threshold.metric}: not measured"
            )
            outcomes.append(outcome)
            reasons.append(outcome.reason)
            continue
        for name, value in values:
            number = float(value) if isinstance(value, (int, float)) else float("nan")
            problems = []
            if math.isnan(number):
                problems.append(f"{name}: not a number")
            else:
                if threshold.min is not None and number < threshold.min:
                    problems.append(f"{name} = {number:.3f} < {threshold.min}")
                if threshold.max is not None and number > threshold.max:
                    problems.append(f"{name} = {number:.3f} > {threshold.max}")
            reason = "; ".join(problems) + (f" ({threshold.why})" if problems and threshold.why else "")
            outcomes.append(
                CheckOutcome(
                    name, None if math.isnan(number) else number, threshold.min, threshold.max, not problems, reason
                )
            )
            if problems:
                reasons.append(reason)
    return Decision(passed=not reasons, reasons=reasons, checks=outcomes)
