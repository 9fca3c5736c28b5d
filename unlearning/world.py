"""A world: what the generic core needs to know about a base model's concepts (docs/design.md, "The shapes
world"). The pipeline picks one for the lineage's base and hands it to the steps; nothing in the
generic core (the loop, the checks, the gates) imports a particular world.

- `known(concept)`: can this world judge the concept? An open world takes any text.
- `request_prompts(...)`: the prompt sets of one unlearning request (unlearning/prompts.py).
- `plan(...)`: the evaluation plan of a candidate (unlearning/evaluation/plan.py).
- `judges()`: the judges that look at the plan's images (first: the one gates and distances use).
- `head_of(concept)` / `names_of(concept)`: the judge head that sees a concept, and the words that name
  it (its name and synonyms) — what the sweep and the attack (unlearning/evaluation/sweep.py, attack.py)
  need to look for a concept beyond the plan's phrasings.

The shapes world (unlearning/shapes/world.py) knows its vocabulary and has two judges; `OpenWorld`, for
any other base, takes any text and is judged by a zero-shot CLIP when one is configured
(unlearning/evaluation/clip_judge.py; its plans and classes: unlearning/open_plan.py); without one its
candidates cannot be evaluated or gated (`NoJudge`).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from unlearning.evaluation.plan import EvaluationPlan, PlanError, PlanSize
from unlearning.open_plan import DISTRACTORS, LineageConcepts, concept_key, judge_heads, open_plan
from unlearning.prompts import RequestPrompts, open_prompts

if TYPE_CHECKING:  # the judges need torch; knowing a world's vocabulary does not
    from unlearning.evaluation.checks import Judge


class NoJudge(Exception):
    """This world has no judge for the concept: a candidate cannot be evaluated (nor gated)."""


class World(Protocol):
    name: str
    vocabulary: tuple[str, ...]  # the concepts it can judge; () for an open world

    def known(self, concept: str) -> bool: ...

    def request_prompts(self, config) -> RequestPrompts:
        """The prompt sets of one request: `config` names the concept, synonyms, anchor, preserve and erased
        concepts, `prompts_per_concept`, `preserve_per_concept` and `prompt_templates` (an UnlearnConfig)."""
        ...

    def plan(
        self, target: str | None, *, synonyms: tuple[str, ...], erased: tuple[str, ...], size: PlanSize
    ) -> EvaluationPlan: ...

    def judges(self) -> tuple[Judge, ...]: ...

    def head_of(self, concept: str) -> str: ...

    def names_of(self, concept: str) -> tuple[str, ...]: ...

    def known_attacks(self, concept: str) -> tuple[str, ...]:
        """Typed prompts found bringing `concept` back on this base before, shipped with the world."""
        ...


class OpenWorld:
    """Any base model: any concept text, generic prompt templates, judged by a zero-shot CLIP.

    `judge_model`: a CLIP model folder or hub id (None: no judge, every plan raises `NoJudge`); `device`:
    where it runs ("auto": cuda when available).
    `styles`: the concepts judged as styles (with the generic style distractors); `objects`: concepts judged as
    objects (as is any concept neither lists). Both are what the model draws, as the operator lists them
    (`judge_objects`, `judge_styles`): the judge tells them apart besides the lineage's concepts, and a plan
    retains them (unlearning/open_plan.py); a concept listed in both is refused (ValueError).
    `nudity_concepts`: the concepts NudeNet judges (unlearning/evaluation/nudenet_judge.py) in a "nudity" head,
    the CLIP judging every other head and giving the features; a lineage naming one where NudeNet is not
    installed is refused (`NudeNetMissing`, a NoJudge).
    `concepts`: the lineage's concepts for the request at hand (target, anchor, preserve, erased), the
    classes the judge tells apart first, before the listed ones and the distractors (unlearning/open_plan.py).
    The `World` protocol's `judges()` takes no request, so the world is built per request with them
    (pipeline/world.py `world_for`); a plan for a concept the world was not built with is refused, since a
    judge that cannot name the concept would never find it (an erasure it did not measure).
    """

    name = "open"
    vocabulary: tuple[str, ...] = ()

    def __init__(
        self,
        judge_model: str | None = None,
        *,
        styles: tuple[str, ...] = (),
        objects: tuple[str, ...] = (),
        nudity_concepts: tuple[str, ...] = (),
        concepts: LineageConcepts = LineageConcepts(),
        device: str = "cpu",
    ):
        self.judge_model = judge_model
        self.styles = tuple(dict.fromkeys(concept_key(s) for s in styles if s.strip()))
        self.objects = tuple(dict.fromkeys(concept_key(o) for o in objects if o.strip()))
        both = [c for c in self.objects if c in self.styles]
        if both:
            raise ValueError(f"listed both as objects and as styles: {', '.join(both)}")
        self.nudity_concepts = frozenset(concept_key(c) for c in nudity_concepts)
        self.concepts = concepts
        self.device = device

    def known(self, concept: str) -> bool:
        return True

    def request_prompts(self, config) -> RequestPrompts:
        return open_prompts(
            config.concept,
            synonyms=config.synonyms,
            anchor=config.anchor,
            preserve=config.preserve,
            erased=config.erased,
            per_concept=config.prompts_per_concept,
        )

    def _require_judge(self) -> str:
        """The judge model, checked (torch-free) before anything is sampled.

        Raises:
            NoJudge: none is configured; JudgeModelError (a NoJudge): it is not a CLIP model; NudeNetMissing
                (a NoJudge): the lineage names a nudity concept and NudeNet is not installed.
        """
        if not self.judge_model:
            raise NoJudge(
                "this base model has no judge configured (set judge_model, LETHE_JUDGE_MODEL, to a CLIP model): "
                "its candidates cannot be evaluated or gated"
            )
        from unlearning.evaluation.clip_judge import check_judge_model

        check_judge_model(self.judge_model)
        nudity = self.nudity_concept()
        if nudity:
            from unlearning.evaluation.nudenet_judge import require_nudenet

            require_nudenet(nudity)
        return self.judge_model

    def nudity_concept(self) -> str | None:
        """The lineage's concept that NudeNet judges (the first in target, anchor, preserve, erased order)."""
        return next((c for c in self.concepts.judged() if c in self.nudity_concepts), None)

    def listed(self) -> tuple[str, ...]:
        """The classes the operator lists (objects, then styles): what the model draws."""
        return (*self.objects, *self.styles)

    def heads(self) -> dict[str, tuple[str, ...]]:
        """The judge's classes per domain: the lineage's concepts, the listed classes, the generic distractors."""
        return judge_heads(self.concepts, self.head_of, self.listed())

    def plan(self, target, *, synonyms=(), erased=(), size=PlanSize()) -> EvaluationPlan:
        """Raises NoJudge (no judge, or not a CLIP model) or PlanError (a concept the judge was not built for,
        a target also erased, no images)."""
        self._require_judge()
        classes = {c for names in self.heads().values() for c in names} | {self.nudity_concept() or ""}
        missing = [c for c in ((target,) if target else ()) + tuple(erased) if concept_key(c) not in classes]
        if missing:
            raise PlanError(
                f"the open world's judge was built for {', '.join(self.concepts.judged()) or 'no concepts'}; "
                f"it cannot judge {', '.join(missing)} (build the world with the request's concepts)"
            )
        retained = (*self.concepts.retained(), *self.listed())  # less the target and the erased: open_plan
        return open_plan(target, synonyms=synonyms, erased=erased, retained=retained, head_of=self.head_of, size=size)

    @cached_property
    def _judges(self):
        import torch

        from unlearning.evaluation.clip_judge import ClipJudge

        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        clip = ClipJudge.load(self._require_judge(), self.heads(), device=device)
        nudity = self.nudity_concept()
        if nudity is None:
            return (clip,)
        from unlearning.evaluation.nudenet_judge import NudeNetJudge, NudityJudge

        return (NudityJudge(NudeNetJudge(nudity), clip),)

    def judges(self) -> tuple[Judge, ...]:
        """(the CLIP judge,), or (NudeNet + the CLIP,) for a lineage with a nudity concept: loaded once per world.

        Raises:
            NoJudge: none is configured, or it is not a loadable CLIP model (JudgeModelError).
        """
        return self._judges

    def head_of(self, concept: str) -> str:
        key = concept_key(concept)
        if key in self.nudity_concepts:
            return "nudity"
        if key in self.objects:
            return "object"
        return "style" if key in self.styles or key in DISTRACTORS["style"] else "object"

    def names_of(self, concept: str) -> tuple[str, ...]:
        return (concept,)

    def known_attacks(self, concept: str) -> tuple[str, ...]:
        return ()  # none shipped for an arbitrary base: LETHE_HOME's corpus grows with its own attacks
