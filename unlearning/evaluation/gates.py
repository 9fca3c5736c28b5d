"""Gates: a policy of thresholds (data) and one pure function that decides.

A policy is a YAML file with a list of thresholds; each names a metric by its dotted path in the
results of `run_checks` ("forget.gate.where_base_draws", "retain.per_concept.*.relative" — `*` checks
every key there) and a bound, `min` and/or `max`. Further keys:

- `test: binomial` — the metric is a rate with its counts (k of n, unlearning/evaluation/stats.py) and
  `min` is the null hypothesis of a one-sided exact test: the check passes only when k of n is
  evidence, at the policy's `alpha` (default 0.05), that the rate exceeds `min`. A point estimate
  above the bar on too few images does not pass;
- `min_n` — the fewest images the metric may rest on; on fewer the gate refuses to decide (a failed
  check saying so);
- `optional: true` — a metric that was not measured is skipped (e.g. rebound for the first request);
  otherwise a missing metric fails the gate;
- `why` and `calibration` — why the bound is there and how it was set (the measurement and the
  multiple): `why` is shown with a failure; `calibration` is kept with the policy, for its reader.

A failed gate is a Decision with reasons, never an exception; only a malformed policy raises
(PolicyError), at load time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from unlearning.evaluation.stats import binomial_upper_tail, min_successes

DEFAULT_POLICY = Path(__file__).with_name("shapes_policy.yaml")  # the shapes world's; load_policy() without a path
OPEN_POLICY = Path(__file__).with_name("open_policy.yaml")  # the open world's: one CLIP judge, its own noise floor
WORLD_POLICIES = {"shapes": DEFAULT_POLICY, "open": OPEN_POLICY}  # by the world's name (unlearning/world.py)
THRESHOLD_KEYS = {"metric", "min", "max", "optional", "why", "test", "min_n", "calibration"}


class PolicyError(ValueError):
    """The policy file is malformed; the message names each problem."""


@dataclass(frozen=True)
class Threshold:
    metric: str
    min: float | None = None
    max: float | None = None
    optional: bool = False
    why: str = ""
    test: str | None = None  # "binomial": `min` is the null hypothesis of an exact one-sided test
    min_n: int | None = None
    calibration: str = ""


@dataclass(frozen=True)
class Policy:
    name: str
    thresholds: tuple[Threshold, ...]
    alpha: float = 0.05


@dataclass(frozen=True)
class CheckOutcome:
    metric: str
    value: float | None
    min: float | None
    max: float | None
    passed: bool
    reason: str = ""
    n: int | None = None  # the images the value rests on
    interval: list | None = None  # its 95 % interval, where the results give one


@dataclass(frozen=True)
class Decision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[CheckOutcome] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "reasons": self.reasons, "checks": [c.__dict__ for c in self.checks]}


def _threshold_problems(i: int, entry) -> list[str]:
    if not isinstance(entry, dict):
        return [f"threshold {i}: not a mapping"]
    problems = []
    if unknown := set(entry) - THRESHOLD_KEYS:
        problems.append(f"threshold {i}: unknown key(s) {', '.join(sorted(unknown))}")
    if not isinstance(entry.get("metric"), str) or not entry["metric"]:
        problems.append(f"threshold {i}: 'metric' must be a dotted path")
    bounds = {k: entry.get(k) for k in ("min", "max")}
    if all(v is None for v in bounds.values()):
        problems.append(f"threshold {i}: needs 'min' or 'max'")
    for key, value in bounds.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.append(f"threshold {i}: '{key}' must be a number")
    if entry.get("test") not in (None, "binomial"):
        problems.append(f"threshold {i}: 'test' must be 'binomial'")
    elif entry.get("test") == "binomial" and not (isinstance(entry.get("min"), (int, float)) and 0 < entry["min"] < 1):
        problems.append(f"threshold {i}: a binomial test needs 0 < min < 1 (its null hypothesis)")
    if entry.get("min_n") is not None and (not isinstance(entry["min_n"], int) or entry["min_n"] < 1):
        problems.append(f"threshold {i}: 'min_n' must be a positive whole number")
    return problems


def default_policy(world: str) -> Path:
    """The shipped policy calibrated for the world named `world` ("shapes", "open"): each is measured with
    that world's judges (bench/calibrate.py), whose noise differs.

    Raises:
        PolicyError: no policy is shipped for that world (set one: `policy`, LETHE_POLICY).
    """
    try:
        return WORLD_POLICIES[world]
    except KeyError:
        raise PolicyError(f"no gate policy is shipped for the {world!r} world: set one (policy)") from None


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
    alpha = document.get("alpha", 0.05)
    problems = [] if isinstance(alpha, float) and 0 < alpha < 0.5 else ["alpha: must be a number in (0, 0.5)"]
    thresholds = []
    for i, entry in enumerate(document["thresholds"], start=1):
        if found := _threshold_problems(i, entry):
            problems += found
            continue
        thresholds.append(
            Threshold(
                entry["metric"],
                entry.get("min"),
                entry.get("max"),
                bool(entry.get("optional", False)),
                str(entry.get("why", "")),
                entry.get("test"),
                entry.get("min_n"),
                str(entry.get("calibration", "")),
            )
        )
    if problems:
        raise PolicyError(f"{path}: " + "; ".join(problems))
    return Policy(str(document.get("name", path.stem)), tuple(thresholds), float(alpha))


def lower_bound(policy: Policy, metric: str) -> float | None:
    """The strictest `min` the policy sets on the metric at dotted path `metric` (a rule's `*` matches any
    one key: "retain.per_concept.*.relative" bounds "retain.per_concept.square.relative"); None when no rule
    sets one. What a two-stage check screens against (unlearning/evaluation/retain_confirm.py)."""
    parts = metric.split(".")
    bounds = [
        t.min
        for t in policy.thresholds
        if t.min is not None
        and len(rule := t.metric.split(".")) == len(parts)
        and all(r in ("*", part) for r, part in zip(rule, parts))
    ]
    return max(bounds) if bounds else None


def _lookup(results: dict, path: str) -> list[tuple[str, object, dict]]:
    """(name, value, the mapping that holds it) at a dotted path; `*` expands over a mapping's keys."""
    found = [("", results, {})]
    for part in path.split("."):
        expanded = []
        for prefix, node, _ in found:
            if not isinstance(node, dict):
                continue
            keys = sorted(node) if part == "*" else ([part] if part in node else [])
            expanded += [(f"{prefix}.{k}" if prefix else k, node[k], node) for k in keys]
        found = expanded
    return found


def _as_number(value, holder: dict) -> tuple[float, int | None, int | None, list | None]:
    """(value, k, n, interval) of a metric: a plain number (its n and interval from the mapping that holds
    it, if any) or a rate with counts ({"k", "n", "wilson", ...})."""
    if isinstance(value, dict) and "n" in value and "k" in value:
        n, k = int(value["n"]), int(value["k"])
        return (k / n if n else float("nan")), k, n, value.get("bootstrap") or value.get("wilson")
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")
    n = holder.get("n") if isinstance(holder.get("n"), int) else None
    interval = holder.get("relative_bootstrap") or holder.get("bootstrap")
    return number, None, n, interval


def _check(threshold: Threshold, name: str, value, holder: dict, alpha: float) -> CheckOutcome:
    number, k, n, interval = _as_number(value, holder)
    problems = []
    if threshold.min_n is not None and (n is None or n < threshold.min_n):
        problems.append(f"{name} rests on n = {n} images; the policy needs at least {threshold.min_n} to decide")
    elif math.isnan(number):
        problems.append(f"{name}: not a number")
    elif threshold.test == "binomial":
        if k is None:
            problems.append(f"{name}: a binomial test needs counts (k of n)")
        elif (p_value := binomial_upper_tail(k, n, threshold.min)) > alpha:
            needed = min_successes(n, threshold.min, alpha)
            problems.append(
                f"{name} = {k}/{n} = {number:.3f}: not evidence that it exceeds {threshold.min} "
                f"(one-sided exact test, p = {p_value:.3f} > {alpha}; passing needs {needed}/{n})"
            )
    else:
        if threshold.min is not None and number < threshold.min:
            problems.append(f"{name} = {number:.3f} < {threshold.min}")
        if threshold.max is not None and number > threshold.max:
            problems.append(f"{name} = {number:.3f} > {threshold.max}")
    reason = "; ".join(problems) + (f" ({threshold.why})" if problems and threshold.why else "")
    return CheckOutcome(
        name,
        None if math.isnan(number) else number,
        threshold.min,
        threshold.max,
        not problems,
        reason,
        n,
        list(interval) if interval else None,
    )


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
        for name, value, holder in values:
            outcome = _check(threshold, name, value, holder, policy.alpha)
            outcomes.append(outcome)
            if not outcome.passed:
                reasons.append(outcome.reason)
    return Decision(passed=not reasons, reasons=reasons, checks=outcomes)
