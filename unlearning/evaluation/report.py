"""The evaluation report: evaluation.json (every number), report.html (the check table, coloured, with
reasons) and PNG grids of base vs candidate for the same prompts and seeds, one per group."""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from unlearning.evaluation.evaluate import Evaluation
from unlearning.sampling import image_grid, upscale

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
tr.pass td.verdict{background:#d7f5dc;color:#11602a}tr.fail td.verdict{background:#fbd9d9;color:#8a1010}
.banner{padding:12px 16px;font-size:20px;font-weight:600;border-radius:6px}
.banner.pass{background:#d7f5dc;color:#11602a}.banner.fail{background:#fbd9d9;color:#8a1010}
.banner.none{background:#eee}
figure{display:inline-block;margin:8px 16px 8px 0;vertical-align:top}figcaption{font-size:13px;color:#555}
img{image-rendering:pixelated;border:1px solid #ddd}
"""


def _json_safe(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


def evaluation_payload(evaluation: Evaluation, extra: dict | None = None) -> dict:
    plan = evaluation.plan
    return _json_safe(
        {
            "plan": {
                "target": plan.target,
                "synonyms": list(plan.synonyms),
                "erased": list(plan.erased),
                "size": asdict(plan.size),
                "images": len(plan.cases),
            },
            "checks": evaluation.results,
            "decision": evaluation.decision.as_dict() if evaluation.decision else None,
            "timings": evaluation.timings,
            **(extra or {}),
        }
    )


GRID_COLUMNS = 20  # phrasings shown per group (every number in the table rests on all of them)


def _interval(interval) -> str:
    if not interval or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in interval):
        return "—"
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _group_grid(evaluation: Evaluation, indices: list[int], scale: int = 3):
    """Two rows: base on top, candidate below, same prompt and seed in each column."""
    stacked = np.concatenate([evaluation.base_images[indices], evaluation.candidate_images[indices]])
    return upscale(image_grid(stacked, columns=len(indices)), scale)


def write_report(evaluation: Evaluation, folder: str | Path, *, title: str, extra: dict | None = None) -> Path:
    """Write evaluation.json, grids/*.png and report.html into `folder`; returns the HTML's path."""
    folder = Path(folder)
    (folder / "grids").mkdir(parents=True, exist_ok=True)
    payload = evaluation_payload(evaluation, extra)
    (folder / "evaluation.json").write_text(json.dumps(payload, indent=2) + "\n")

    figures = []
    for group, indices in evaluation.plan.groups().items():
        name = group.replace("/", "-") + ".png"
        shown = indices[:: evaluation.plan.size.seeds_per_prompt][:GRID_COLUMNS]  # first seed of each phrasing
        _group_grid(evaluation, shown).save(folder / "grids" / name)
        cases = [evaluation.plan.cases[i] for i in indices]
        rates = evaluation.results["groups"][group]
        prompts = "<br>".join(html.escape(c.prompt) for c in cases[:3]) + (" …" if len(cases) > 3 else "")
        figures.append(
            f'<figure><img src="grids/{name}" alt="{html.escape(group)}"><figcaption><b>{html.escape(group)}</b> — '
            f"detected: base {rates['base_detection']:.2f}, candidate {rates['detection']:.2f}<br>{prompts}"
            "</figcaption></figure>"
        )

    decision = evaluation.decision
    if decision is None:
        banner = '<div class="banner none">No policy applied</div>'
        rows = ""
    else:
        verdict = "PASSED" if decision.passed else "FAILED"
        banner = f'<div class="banner {"pass" if decision.passed else "fail"}">Gate {verdict}</div>'
        rows = "".join(
            f'<tr class="{"pass" if c.passed else "fail"}"><td>{html.escape(c.metric)}</td>'
            f"<td>{'—' if c.value is None else f'{c.value:.4f}'}</td><td>{_interval(c.interval)}</td>"
            f"<td>{'—' if c.n is None else c.n}</td>"
            f"<td>{'' if c.min is None else '≥ ' + str(c.min)} {'' if c.max is None else '≤ ' + str(c.max)}</td>"
            f'<td class="verdict">{"pass" if c.passed else "fail"}</td><td>{html.escape(c.reason)}</td></tr>'
            for c in decision.checks
        )
    plan = evaluation.plan
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Target: <b>{html.escape(plan.target or "—")}</b>; erased earlier: {html.escape(", ".join(plan.erased) or "—")};
{plan.size.forget_images} images per forget and rebound set, {plan.size.retain_images} per retained concept
({plan.size.seeds_per_prompt} seeds per prompt), {len(plan.cases)} images per model;
base images: {evaluation.timings["base_images_cached"]} cached,
{evaluation.timings["base_images_generated"]} generated.</p>
{banner}
<h2>Checks</h2>
<table><tr><th>metric</th><th>value</th><th>95 % interval</th><th>n</th><th>bound</th><th>verdict</th>
<th>reason</th></tr>
{rows}</table>
<h2>Base (top row) vs candidate (bottom row), same prompts and seeds</h2>
{"".join(figures)}
<p>All numbers: <a href="evaluation.json">evaluation.json</a></p>
</body></html>"""
    target = folder / "report.html"
    target.write_text(page)
    return target
