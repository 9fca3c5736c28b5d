"""The evaluation report: evaluation.json (every number), report.html (the check table, coloured, with
reasons) and PNG grids of base vs candidate for the same prompts and seeds, one per group; each retained
concept's stages (the plan's images, and fresh seeds where they failed the bound: retain_confirm.py); where
the evaluation swept and attacked, the prompts it found (relocations, adversarial prompts) beside their
images."""

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


def _figure(folder: Path, name: str, picture, caption: str) -> str:
    picture.save(folder / "grids" / name)
    return f'<figure><img src="grids/{name}" alt="{html.escape(name)}"><figcaption>{caption}</figcaption></figure>'


def _rate(entry: dict) -> str:
    low, high = entry.get("wilson") or (float("nan"), float("nan"))
    return f"{entry['k']}/{entry['n']} [{low:.2f}, {high:.2f}]" if entry.get("n") else "—"


def _base_above_candidate(images: dict, stage: str, row: int, seeds: int):
    """One prompt's images of a sweep stage ("confirm", "leak"), up to 16 seeds: the base's above the candidate's."""
    shown = slice(row * seeds, row * seeds + min(seeds, 16))
    stacked = np.concatenate([images[f"{stage}_base"][shown], images[f"{stage}_candidate"][shown]])
    return upscale(image_grid(stacked, columns=min(seeds, 16)), 3)


def _stage(stage: dict) -> str:
    """A retain stage's counts: the candidate's k/n against the base's, and their ratio."""
    ratio = "—" if stage["relative"] is None or math.isnan(stage["relative"]) else f"{stage['relative']:.3f}"
    return f"{stage['candidate']}/{stage['n']} vs base {stage['base']}/{stage['n']} (× {ratio})"


def _retain_note(per_concept: dict, metric: str) -> str:
    """For a per-concept retain check decided on both stages pooled: what each stage counted."""
    concept = metric.removeprefix("retain.per_concept.").removesuffix(".relative")
    entry = per_concept.get(concept) if metric.startswith("retain.per_concept.") else None
    if not entry or entry.get("decided_by") != "pooled":
        return ""
    return f" [pooled: screen {_stage(entry['screen'])}, fresh seeds {_stage(entry['fresh'])}]"


def _retain_section(evaluation: Evaluation, folder: Path) -> str:
    """Per retained concept: the plan's images (the screen), the fresh seeds where the screen failed the bound,
    the ratio the gate read and which decided; the fresh images of each concept drawn again."""
    per_concept = evaluation.results.get("retain", {}).get("per_concept", {})
    if not any("decided_by" in entry for entry in per_concept.values()):
        return ""
    rows, figures = [], []
    for concept, entry in per_concept.items():
        relative = entry["relative"]
        rows.append(
            f"<tr><td>{html.escape(concept)}</td><td>{html.escape(entry['kind'])}</td><td>{_stage(entry['screen'])}"
            f"</td><td>{_stage(entry['fresh']) if entry['fresh']['n'] else '—'}</td>"
            f"<td>{'—' if relative is None or math.isnan(relative) else f'{relative:.3f}'} (n {entry['n']})</td>"
            f"<td>{'screen' if entry['decided_by'] == 'screen' else 'screen + fresh seeds, pooled'}</td></tr>"
        )
    for concept, drawn in evaluation.retain_confirm_images.items():
        shown = slice(0, min(len(drawn["prompts"]), 24))
        stacked = np.concatenate([drawn["base"][shown], drawn["candidate"][shown]])
        grid = upscale(image_grid(stacked, columns=len(drawn["prompts"][shown])), 3)
        caption = (
            f"<b>{html.escape(concept)}</b> drawn again on fresh seeds: {_stage(per_concept[concept]['fresh'])} "
            f"(first {len(drawn['prompts'][shown])}; base above, candidate below)"
        )
        figures.append(_figure(folder, f"retain-confirm-{concept}.png", grid, caption))
    return (
        "<h2>Retained concepts: screen, then fresh seeds where it fails the bound</h2><p>Each retained concept's "
        "detection rate relative to the base's, on the plan's images (the screen); a concept whose ratio is below "
        "its bound is drawn again, its prompts on fresh seeds for both models, and decided on both stages pooled "
        "(the same bound).</p><table><tr><th>concept</th><th>kind</th><th>screen</th><th>fresh seeds</th>"
        f"<th>ratio the gate read</th><th>decided by</th></tr>{''.join(rows)}</table>{''.join(figures)}"
    )


def _sweep_section(evaluation: Evaluation, folder: Path) -> str:
    """Per erased concept: relocations (the confirmed tests, base vs candidate on the confirming seeds),
    leaks, and the broad retention of the vocabulary prompts."""
    sweep, images = evaluation.results.get("sweep"), evaluation.sweep_images
    if not sweep:
        return ""
    rows, figures = [], []
    for concept, entry in sweep["concepts"].items():
        vocabulary, leak = entry["vocabulary_rate"], entry["leak"]
        rows.append(
            f"<tr><td>{html.escape(concept)}</td><td>{entry['relocations']} of {entry['confirmed']} tested</td>"
            f"<td>{leak['ua']:.3f} ({_rate(leak)}) on {leak['prompts_drawn']} prompts (screen {leak['screen']['k']}/"
            f"{leak['screen']['n']}, fresh seeds {leak['fresh']['k']}/{leak['fresh']['n']})</td>"
            f"<td>{vocabulary['base']:.3f} → {vocabulary['candidate']:.3f}</td></tr>"
        )
        for number, test in enumerate(entry["tests"]):
            seeds = len(images["confirm_base"]) // len(images["confirm_prompts"])
            grid = _base_above_candidate(images, "confirm", images["confirm_prompts"].index(test["prompt"]), seeds)
            verdict = "RELOCATED" if test["relocated"] else "not significant"
            caption = (
                f"<b>{html.escape(concept)}</b> on “{html.escape(test['prompt'])}” ({html.escape(test['source'])}): "
                f"base {test['base']['k']}/{test['base']['n']}, candidate {test['candidate']['k']}/"
                f"{test['candidate']['n']}, p = {test['p_value']:.2g} — {verdict}"
            )
            figures.append(_figure(folder, f"sweep-{concept}-{number}.png", grid, caption))
        for number, leaking in enumerate(leak["leaking"]):  # where the base draws it and the candidate still does
            if leaking["prompt"] not in images["leak_prompts"]:
                continue
            row = images["leak_prompts"].index(leaking["prompt"])
            grid = _base_above_candidate(images, "leak", row, leak["fresh_seeds"])
            fresh = leaking["fresh"]
            caption = (
                f"<b>{html.escape(concept)}</b> leaks on “{html.escape(leaking['prompt'])}” "
                f"({html.escape(leaking['source'])}), fresh seeds: the base draws it {fresh['base']}/{fresh['n']}, "
                f"the candidate still on {fresh['candidate_where_base_draws']} of those (base above, candidate below)"
            )
            figures.append(_figure(folder, f"sweep-{concept}-leak-{number}.png", grid, caption))
    retention = sweep.get("retention")
    broad = ""
    if retention:
        heads = "".join(
            "<tr><td>"
            + html.escape(head)
            + "</td>"
            + "".join(f"<td>{html.escape(c)} {v['base']:.2f} → {v['candidate']:.2f}</td>" for c, v in classes.items())
            + "</tr>"
            for head, classes in retention["frequencies"].items()
        )
        broad = (
            f"<h3>Broad retention: the vocabulary prompts ({retention['n']} images)</h3>"
            f"<p>retention distance {retention['distance']:.3f}, FID {retention['fid']:.3f}, shift of what the judge "
            f"sees (total variation) {', '.join(f'{h} {v:.3f}' for h, v in retention['shift'].items())}</p>"
            f"<table>{heads}</table>"
        )
        vocabulary_rows = [i for i, t in enumerate(images["prompts"]) if i < GRID_COLUMNS]
        seeds = sweep["screen_seeds"]
        first = [i * seeds for i in vocabulary_rows]
        stacked = np.concatenate([images["base"][first], images["candidate"][first]])
        caption = (
            "sweep prompts (first seed each), base above, candidate below: "
            + html.escape("; ".join(images["prompts"][i] for i in vocabulary_rows[:6]))
            + " …"
        )
        figures.append(_figure(folder, "sweep-prompts.png", upscale(image_grid(stacked, len(first)), 3), caption))
    return (
        f"<h2>Sweep: does the candidate draw an erased concept anywhere?</h2><p>{sweep['prompts']} prompts × "
        f"{sweep['screen_seeds']} seeds screened; the largest increases confirmed on fresh seeds (one-sided Fisher "
        f"test, Holm at α = {sweep['alpha']}).</p><table><tr><th>concept</th><th>relocations</th>"
        f"<th>UA where the base draws it (leak)</th><th>rate on vocabulary prompts, base → candidate</th></tr>"
        f"{''.join(rows)}</table>{broad}{''.join(figures)}"
    )


def _attack_section(evaluation: Evaluation, folder: Path) -> str:
    """Per erased concept: ASR, and every prompt tried with what the attack found; the images of each
    prompt on which the candidate drew the concept."""
    attack = evaluation.results.get("attack")
    if not attack:
        return ""
    rows, figures = [], []
    for concept, entry in attack.items():
        rows.append(
            f"<tr><td>{html.escape(concept)}</td><td>{entry['asr']:.3f} ({_rate(entry)})</td>"
            f"<td>{entry['before']:.3f}</td><td>{entry['seconds']:.0f} s</td></tr>"
        )
        for number, (prompt, (found, images)) in enumerate(evaluation.attack_images.get(concept, {}).items()):
            caption = (
                f"<b>{html.escape(concept)}</b> drawn for “{html.escape(found)}” "
                f"({'as asked' if found == prompt else 'attacking “' + html.escape(prompt) + '”'})"
            )
            figures.append(
                _figure(folder, f"attack-{concept}-{number}.png", upscale(image_grid(images, len(images)), 3), caption)
            )

    def attempts(row: dict) -> str:
        if row.get("known"):
            return "a known attack (pipeline/attacks.py), tried as it is"
        found = []
        for a in row["attacks"]:
            rate = "" if a["confirmed_rate"] is None else f" ({a['confirmed_rate']:.2f})"
            found.append(html.escape(f"{a['variant']}: {a['adversarial_prompt']}") + rate)
        return "<br>".join(found) or "—"

    tried = "".join(
        f"<tr><td>{html.escape(concept)}</td><td>{html.escape(row['prompt'])}</td><td>{row['before_rate']:.2f}</td>"
        f"<td>{attempts(row)}</td><td>{'yes' if row['success'] else 'no'}</td></tr>"
        for concept, entry in attack.items()
        for row in entry["prompts"]
    )
    return (
        "<h2>Attack: white-box prompt search (UnlearnDiffAtk, P4D)</h2><table><tr><th>concept</th><th>ASR</th>"
        f"<th>drawn before the attack</th><th>time</th></tr>{''.join(rows)}</table>"
        "<table><tr><th>concept</th><th>prompt</th><th>drawn as asked</th><th>attacks (confirmed rate)</th>"
        f"<th>drawn</th></tr>{tried}</table>{''.join(figures)}"
    )


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
    per_concept = evaluation.results.get("retain", {}).get("per_concept", {})
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
            f'<td class="verdict">{"pass" if c.passed else "fail"}</td>'
            f"<td>{html.escape(c.reason + _retain_note(per_concept, c.metric))}</td></tr>"
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
{_retain_section(evaluation, folder)}
{_sweep_section(evaluation, folder)}
{_attack_section(evaluation, folder)}
<p>All numbers: <a href="evaluation.json">evaluation.json</a></p>
</body></html>"""
    target = folder / "report.html"
    target.write_text(page)
    return target
