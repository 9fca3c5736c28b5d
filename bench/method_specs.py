"""Method specs of the benchmarks (`name[:key=value,...][@label]`) and the main job's requests, shared by
bench/attack.py and bench/prompt_rates.py (imported by name: a bench script's folder comes first on sys.path)."""

from __future__ import annotations

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
