"""What the method benchmarks share (bench/attack.py, bench/methods.py, bench/prompt_rates.py; imported by name: a
bench script's folder comes first on sys.path): method specs (`name[:key=value,...][@label]`), the main job's
requests, and one evaluated step through the pipeline's own `unlearn_and_evaluate`."""

from __future__ import annotations

import time
from pathlib import Path

MAIN_JOB = {"circle": (("disc",), ("ring",)), "striped": (("stripy",), ()), "star": (("pentagram",), ())}
SEQUENCE = ("circle", "striped", "star", "dotted", "heart", "checkered", "diamond", "gradient", "ring", "speckled")


def parse_spec(spec: str) -> tuple[str, str, dict, dict]:
    """(label, method, hyper, config fields) of `name[:key=value,...][@label]`: a key that names an
    UnlearnConfig field (steps, broad_prompts, ...) sets it; any other is a hyper-parameter."""
    from dataclasses import fields

    from unlearning.config import UnlearnConfig

    body, _, label = spec.partition("@")
    name, _, rest = body.partition(":")
    config_fields = {f.name: f.type for f in fields(UnlearnConfig)}
    hyper, options = {}, {}
    for key, _, value in (item.partition("=") for item in filter(None, rest.split(","))):
        if key in config_fields and key != "hyper":
            kind = config_fields[key].split(" ")[0]
            options[key] = {"int": int, "bool": lambda v: bool(int(v)), "str": str}.get(kind, float)(value)
        else:
            hyper[key] = float(value)
    return label or body, name, hyper, options


def request(settings, evaluator, base, parent: str, out: Path, *, concept, method, hyper, erased=(), **fields):
    """One decremental step from `parent` into `out` through the pipeline's own step (pipeline/unlearn.py
    `unlearn_and_evaluate`, as the flow and `lethe unlearn` run it); (payload, train s, eval s)."""
    from pipeline.prepare import load_parent_model
    from pipeline.unlearn import lineage_erased, unlearn_and_evaluate
    from unlearning.loop import UnlearnConfig

    started = time.perf_counter()
    loaded = load_parent_model(settings, parent)
    config = UnlearnConfig(
        concept=concept,
        erased=lineage_erased(tuple(loaded.erased), tuple(erased)),
        method=method,
        hyper=dict(hyper),
        **fields,
    )
    out.mkdir(parents=True, exist_ok=True)
    step = unlearn_and_evaluate(
        settings,
        evaluator,
        config,
        loaded,
        out,
        report_dir=out / "report",
        title=f"bench: {method} erases {concept}",
        base=base,
        self_contained=True,
    )
    trained = time.perf_counter() - started - step.evaluation.timings.get("total_seconds", 0.0)
    return step.payload, trained, time.perf_counter() - started - trained
