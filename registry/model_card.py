"""A model card per version, with Hugging Face metadata (`base_model`, `base_model_relation`)."""

from __future__ import annotations

import yaml


def _lineage(erased: list[str], revoked: list[dict]) -> list[str]:
    """Every erasure of the lineage in order, the revoked ones struck through (Markdown)."""
    struck = [f"~~{r['concept']}~~ ({r['request_id']}, revoked: {r['reason']})" for r in revoked]
    return [*struck, *erased]


def model_card(
    *,
    model_name: str,
    version_label: str,
    base_model: str,
    erased: list[str],
    request: dict,
    gate_passed: bool,
    gate_reasons: list[str],
    metrics: dict[str, float],
    revoked: list[dict] = (),
    params: dict | None = None,
) -> str:
    """The card's Markdown. `params`: the step's effective settings and hyper-parameters, as resolved by
    unlearning/config.py `UnlearnConfig.effective` (what ran, defaults included)."""
    front_matter = {
        "base_model": base_model,
        "base_model_relation": "finetune",
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": ["lethe", "concept-unlearning", *[f"erased:{c}" for c in erased]],
    }
    lines = [
        "---",
        yaml.safe_dump(front_matter, sort_keys=False).strip(),
        "---",
        "",
        f"# {model_name} {version_label}",
        "",
        f"`{base_model}` with these concepts removed, in order: {', '.join(erased) or '(none)'}.",
        "",
        *(
            [f"Lineage: {', '.join(_lineage(erased, revoked))} (struck through: revoked, re-derived without it).", ""]
            if revoked
            else []
        ),
        "Produced by Lethe (continual, decremental unlearning). Load it with",
        f'`registry.loading.load_pipeline("models:/{model_name}/<version>")`; every file is checked against',
        "`manifest.json` on load.",
        "",
        "## Request",
        "",
        *[f"- **{k}**: {v}" for k, v in request.items()],
        "",
        *(["## Settings that ran", "", *[f"- **{k}**: {v}" for k, v in params.items()], ""] if params else []),
        f"## Gate: {'passed' if gate_passed else 'FAILED'}",
        "",
        *([f"- {r}" for r in gate_reasons] or ["- no failing check"]),
        "",
        "## Evaluation",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())],
        "",
    ]
    return "\n".join(lines)
