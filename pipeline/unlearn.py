"""Unlearn: one decremental step with the one training loop (unlearning/loop.py), then its evaluation.

The parent is loaded, the request's config and prompts are built, the loop trains (or a closed-form
method edits) and writes `delta.safetensors` and `summary.json` under `out_dir`. A step that finished
before under the same config is not trained again (a request resumed after a crash during evaluation
goes straight on); one stopped part-way resumes from its checkpoint.

`unlearn_and_evaluate` is the one home of "unlearn, then judge the candidate against the base on the
target, its synonyms and every concept the lineage erased before (rebound)": the request flow
(pipeline/evaluate.py `unlearn_and_evaluate_request`), `lethe unlearn` and bench/ all call it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.evaluate import OUTCOME_FILE, evaluate_model, judged_key
from pipeline.evaluator import Evaluator, flatten_metrics
from pipeline.prepare import load_parent_model, unlearn_config
from pipeline.settings import LetheSettings
from pipeline.values import Outcome, Parent
from registry.loading import LoadedModel
from unlearning.delta import denoiser
from unlearning.evaluation.evaluate import Evaluation
from unlearning.files import write_json
from unlearning.loop import ConfigError, UnlearnConfig, finished_summary, run_unlearning
from unlearning.mining import mine_prompts, parent_screen
from unlearning.model_folder import DELTA_FILE, LINEAGE_FILE, PARENTS_DIR, ancestor_path, save_lineage
from unlearning.open_plan import LineageConcepts
from unlearning.prompts import broad_prompts
from unlearning.sampling import load_model
from unlearning.world import World


@dataclass(frozen=True)
class Step:
    """One step unlearned and judged: the loop's summary, the evaluation and its report's payload."""

    summary: dict
    evaluation: Evaluation
    payload: dict


def lineage_erased(parent_erased: tuple[str, ...], given: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The concepts erased before this step: the parent's own record (an unlearn folder's summary, a
    version's manifest). `given` (`lethe unlearn --erased`) may repeat it, or name them for a parent that
    keeps no record (a plain diffusers folder); it may not contradict it: a step that leaves an erased
    concept out puts it in the preserve set (pulling it back) and judges no rebound for it.

    Raises:
        ConfigError: `given` names other concepts than the parent erased.
    """
    if not parent_erased:
        return tuple(given)
    if given and sorted(given) != sorted(parent_erased):
        raise ConfigError(
            f"--erased {', '.join(given)} contradicts the parent, which erased {', '.join(parent_erased)}; "
            "leave --erased out (the parent's are used)"
        )
    return tuple(parent_erased)


def unlearn_and_evaluate(
    settings: LetheSettings,
    evaluator: Evaluator,
    config: UnlearnConfig,
    loaded: LoadedModel,
    out_dir: Path,
    *,
    report_dir: Path,
    title: str,
    base=None,
    self_contained: bool = False,
    progress: bool = False,
    metadata: dict | None = None,
) -> Step:
    """Unlearn `config` from the loaded parent into `out_dir`, then evaluate the candidate (the parent's
    pipeline, edited in place) against the base. `config.erased` must be the lineage's (`lineage_erased`):
    they are replayed while training and their rebound is judged. `self_contained` copies the parent's
    deltas beside the new one (an `lethe unlearn --out` folder is a model by itself); `base` reuses a
    loaded base pipeline (bench/ judges many steps against one)."""
    if self_contained:
        keep_ancestors(loaded, out_dir)
    base = base if base is not None else load_model(loaded.base_model)  # loaded once: θ_0 and the judge's base
    summary = train_step(
        settings, config, loaded, out_dir, world=evaluator.world, progress=progress, metadata=metadata, base=base
    )
    evaluation, payload = evaluate_model(
        evaluator,
        loaded.pipe,
        base,
        base_sha256=loaded.base_sha256,
        target=config.concept,
        synonyms=config.synonyms,
        erased=config.erased,
        report_dir=report_dir,
        title=title,
    )
    return Step(summary, evaluation, payload)


def train_step(
    settings: LetheSettings,
    config: UnlearnConfig,
    loaded: LoadedModel,
    out_dir: Path,
    *,
    world: World,
    progress: bool = True,
    metadata: dict | None = None,
    base=None,
) -> dict:
    """Run the loop on a loaded parent (its pipeline is modified in place: afterwards it is the
    candidate). `world`: the lineage's (its prompts; its judge mines, for a method that mines). `base`:
    the base pipeline when the caller has it loaded (its denoiser's values are θ_0). Returns the loop's summary."""
    base = base if base is not None else load_model(loaded.base_model)
    base_values = {k: v.clone() for k, v in denoiser(base).state_dict().items()}
    metadata = {"base_model": loaded.base_model, "base_sha256": loaded.base_sha256, **(metadata or {})}
    prompts = world.request_prompts(config)
    pool = config.mine_pool or config.broad_prompts
    if config.mine and pool and finished_summary(out_dir, config) is None:
        # the parent's own images of the method's broad prompts, judged: what it draws the target for
        mined, record = mine_prompts(
            loaded.pipe,
            world.judges()[0],
            head=world.head_of(config.concept),
            concept=config.concept,
            prompts=broad_prompts(loaded.pipe.tokenizer, pool, seed=config.seed),
            steps=config.data_steps,
            guidance_scale=config.guidance_scale,
            seeds_each=config.mine_seeds,
            progress=progress,
        )
        prompts = replace(prompts, mined=tuple(mined))
        metadata = {**metadata, "mining": record}
    return run_unlearning(
        loaded.pipe,
        config,
        out_dir,
        prompts=prompts,
        model_sha=loaded.identity,
        base_values=base_values,
        cache_dir=settings.home / "cache" / "unlearning",  # the parent's latents, the broad Gram
        metadata=metadata,
        progress=progress,
        lineage=loaded.lineage,
        base_sha=loaded.base_sha256,
        drawn_by_parent=parent_screen(loaded.pipe, world, config, progress=progress),  # the parent's verdicts
    )


def keep_ancestors(loaded: LoadedModel, out_dir: Path) -> None:
    """Copy the parent's deltas (and lineage terms) beside the new one, so `out_dir` is a model by itself
    (the layout: unlearning/model_folder.py)."""
    for index, path in enumerate(loaded.ancestors):
        ancestor_path(out_dir, index).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, ancestor_path(out_dir, index))
    if loaded.lineage is not None:
        (out_dir / PARENTS_DIR).mkdir(parents=True, exist_ok=True)
        concepts = sorted({key.rsplit("::", 1)[0] for key in loaded.lineage})
        save_lineage(out_dir / PARENTS_DIR / LINEAGE_FILE, loaded.lineage, concepts)


def unlearn_and_evaluate_request(settings: LetheSettings, request, parent: Parent, work_dir: Path) -> Outcome:
    """The request's step, from the version it was claimed against (`parent`, loaded and verified once, as
    is the base), unlearned into `work_dir/train` (a loss method samples and caches the parent's training
    images there: unlearning/data.py) and judged into `work_dir/report`; the gate's decision and every
    number come back as an `Outcome` (also written to `work_dir/outcome.json`). A request resumed after a
    crash trains only what it had not finished and evaluates only what it had not judged (`outcome.json`
    records what it judged)."""
    concepts = LineageConcepts(request.concept, request.anchor, tuple(request.preserve), tuple(parent.erased))
    evaluator = Evaluator.from_settings(settings, concepts=concepts)  # an open world's judge names them
    train_dir, outcome_file = work_dir / "train", work_dir / OUTCOME_FILE
    if outcome_file.is_file() and (train_dir / DELTA_FILE).is_file():
        recorded = json.loads(outcome_file.read_text())
        if recorded.get("judged") == judged_key(evaluator, train_dir / DELTA_FILE):
            return Outcome.from_dict(recorded["outcome"])
    config = unlearn_config(settings, request, parent)
    loaded = load_parent_model(settings, parent.source(settings.model_name, settings.base_model))
    step = unlearn_and_evaluate(
        settings,
        evaluator,
        config,
        loaded,
        train_dir,
        report_dir=work_dir / "report",
        title=f"Request {request.id}: erase {config.concept}",
        metadata={"request_id": request.id},
    )
    decision = step.evaluation.decision
    outcome = Outcome(
        request_id=request.id,
        delta=str(train_dir / DELTA_FILE),
        report_dir=str(work_dir / "report"),
        report_html=str(work_dir / "report" / "report.html"),
        metrics=flatten_metrics(step.payload["checks"]),
        gate_passed=decision.passed,
        gate_reasons=tuple(decision.reasons),
        gate_checks=tuple(decision.checks),
        erased=(*parent.erased, config.concept),
        # what ran, resolved once; the parameter set the loop trained (an MMDiT's `text-proj`)
        params={
            **config.effective(),
            "params": step.summary.get("params", config.params),
            "train_seconds": step.summary["seconds"],
        },
        base_sha256=loaded.base_sha256,
        resumed_from_step=step.summary.get("resumed_from_step", 0),
        reused_training=bool(step.summary.get("reused")),
        extra_files={LINEAGE_FILE: str(lineage)} if (lineage := train_dir / LINEAGE_FILE).is_file() else {},
    )
    write_json(outcome_file, {"judged": judged_key(evaluator, train_dir / DELTA_FILE), "outcome": outcome.as_dict()})
    return outcome
