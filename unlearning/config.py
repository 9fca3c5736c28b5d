"""The configuration of one unlearning step (the one training loop: unlearning/loop.py).

Every default is resolved here, once: the parameter set and prompt sizes a method prefers, its
hyper-parameters (`DEFAULTS`, and DoCo's with domain correction) under the request's overrides, and no
training steps for a closed-form edit. The config record — in the checkpoint, `summary.json`, the delta
header — and `effective()` — MLflow's params and the model card — therefore name what actually ran.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from unlearning import domain
from unlearning.methods import DEFAULT_METHOD, REQUEST_OPTIONS, UnknownMethod, get_method
from unlearning.parameters import PARAMETER_SETS


class ConfigError(ValueError):
    """An unlearning configuration that cannot run (every problem named); nothing was written."""


@dataclass(frozen=True)
class UnlearnConfig:
    concept: str
    synonyms: tuple[str, ...] = ()
    anchor: str | None = None  # None: the world's default (shapes: a surrogate concept, square or solid)
    preserve: tuple[str, ...] = ()
    erased: tuple[str, ...] = ()  # concepts erased earlier in the lineage (the replay set)
    method: str = DEFAULT_METHOD
    params: str | None = None  # None: the method's own set (its PARAMS: esd-u trains non-xattn, the rest xattn-kv)
    lora_rank: int = 4  # rank r of the attn2 adapters when params == "lora" (α = r: adapter scale 1)
    steps: int = 150  # training steps of a loss method; a closed-form edit resolves it to 0
    batch_size: int = 8  # forget and preserve batches each
    lr: float = 1e-3  # tuned on the shapes world: see bench/RESULTS.md ("Tuning DUGE")
    grad_clip: float = 1.0
    gradient_surgery: bool = False  # project the forget gradient off the preserve gradient on conflict
    domain_correction: bool = (
        False  # duge only: a latent discriminator, target outputs vs anchor outputs (unlearning/domain.py)
    )
    checkpoint_every: int = 25
    seed: int = 0
    prompts_per_concept: int | None = None  # target prompts; None: the method's (PROMPTS_PER_CONCEPT, else 24)
    preserve_per_concept: int | None = None  # preserve prompts per other concept; None: the method's (else 2)
    prompt_templates: str | None = None  # the world's template set: None: the method's (PROMPT_TEMPLATES, else "train")
    broad_prompts: int | None = None  # method-half vocabulary prompts: a closed form's broad Gram G, a loss method's
    # broad preserve prompts (distilled from the parent); None: the method's BROAD_PROMPTS (else 0)
    prefixed_prompts: int | None = None  # extra target/anchor pairs with 1-5 method-half vocabulary words
    # prepended to both (unlearning/prompts.py `with_prefixes`); None: the method's PREFIXED_PROMPTS (else 0)
    mine: bool | None = None  # screen the broad preserve prompts with the judge; those the parent draws the
    # concept for join the forget set (unlearning/mining.py); None: the method's MINE (else False)
    mine_seeds: int = 4  # images per screened prompt (1: every image showing the concept is mined)
    mine_pool: int = 0  # method-half vocabulary prompts screened for mining; 0: the broad preserve prompts
    data_steps: int = 20  # sampler steps when generating the parent's anchor/preserve images
    guidance_scale: float = 5.0
    compile: bool = False
    # method hyper-parameters: the request's overrides, resolved over the method's DEFAULTS (and domain.DEFAULTS
    # with domain_correction) in __post_init__
    hyper: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # resolved here, so the config record, the checkpoint, the delta header, summary.json, MLflow and the
        # model card all name what ran
        try:
            method = get_method(self.method)
        except UnknownMethod:
            return  # validate() names it
        for name, attribute, default in (
            ("params", "PARAMS", None),
            ("prompts_per_concept", "PROMPTS_PER_CONCEPT", 24),
            ("preserve_per_concept", "PRESERVE_PER_CONCEPT", 2),
            ("prompt_templates", "PROMPT_TEMPLATES", "train"),
            ("broad_prompts", "BROAD_PROMPTS", 0),
            ("prefixed_prompts", "PREFIXED_PROMPTS", 0),
            ("mine", "MINE", False),
        ):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(method, attribute, default))
        # the effective hyper-parameters: the request's overrides over the method's DEFAULTS (and DoCo's);
        # an unknown name stays, for validate() to name it
        defaults = {**method.DEFAULTS, **(domain.DEFAULTS if self.domain_correction else {})}
        object.__setattr__(self, "hyper", {**defaults, **self.hyper})
        if method.KIND == "edit":  # a closed form edits once: no training steps ran, whatever was asked
            object.__setattr__(self, "steps", 0)

    def effective(self) -> dict:
        """What ran, flat (MLflow's params, the model card): the method, its parameter set and prompt sizes,
        each hyper-parameter as `hyper.<name>`, and — for a method that trains — steps, learning rate, batch,
        clipping and the options that shape training. A closed form has no steps, learning rate or batch."""
        record = {
            "method": self.method,
            "params": self.params,
            "seed": self.seed,
            "prompts_per_concept": self.prompts_per_concept,
            "preserve_per_concept": self.preserve_per_concept,
            "prompt_templates": self.prompt_templates,
            "broad_prompts": self.broad_prompts,
            "prefixed_prompts": self.prefixed_prompts,
            "mine": self.mine,
            **({"mine_seeds": self.mine_seeds, "mine_pool": self.mine_pool} if self.mine else {}),
        }
        if get_method(self.method).KIND != "edit":
            record.update(
                steps=self.steps,
                lr=self.lr,
                batch_size=self.batch_size,
                grad_clip=self.grad_clip,
                gradient_surgery=self.gradient_surgery,
                domain_correction=self.domain_correction,
                **({"lora_rank": self.lora_rank} if self.params == "lora" else {}),
            )
        return {**record, **{f"hyper.{name}": value for name, value in sorted(self.hyper.items())}}

    @classmethod
    def from_request(cls, request, *, erased: tuple[str, ...] = (), **operator) -> UnlearnConfig:
        """The config of one request: its concept, synonyms, anchor, preserve set, method and options
        (registry/requests.py), the concepts erased before it, and operator settings (steps, checkpoint_every).
        An operator value of None leaves the request's (or the default)."""
        options = {k: v for k, v in dict(request.options).items() if k in REQUEST_OPTIONS}
        options.update({k: v for k, v in operator.items() if v is not None})
        if "hyper" in options:
            options["hyper"] = dict(options["hyper"])
        return cls(
            concept=request.concept,
            synonyms=tuple(request.synonyms),
            anchor=request.anchor or None,
            preserve=tuple(request.preserve),
            erased=tuple(erased),
            method=request.method,
            **options,
        )

    def record(self) -> dict:
        """The config as plain JSON values: what checkpoints, summaries and idempotency compare."""
        return json.loads(json.dumps(asdict(self)))

    def validate(self) -> None:
        """Raise one ConfigError naming every problem (before anything is written)."""
        problems = []
        if not self.concept or not self.concept.strip():
            problems.append("concept: is empty")
        if self.anchor is not None and self.anchor.strip().lower() == self.concept.strip().lower():
            problems.append("anchor: equals the concept")
        if self.steps < 0:
            problems.append("steps: must be >= 0")
        if self.batch_size < 1:
            problems.append("batch_size: must be >= 1")
        if self.mine_seeds < 1:
            problems.append("mine_seeds: must be >= 1")
        if (self.prefixed_prompts or 0) < 0:  # None where the method is unknown (named below)
            problems.append("prefixed_prompts: must be >= 0")
        if self.mine_pool < 0:
            problems.append("mine_pool: must be >= 0")
        try:
            method = get_method(self.method)
        except UnknownMethod as error:
            method = None
            problems.append(f"method: {error}")
        if self.params not in PARAMETER_SETS:
            problems.append(f"params: unknown {self.params!r}; known: {', '.join(PARAMETER_SETS)}")
        elif method is not None and method.KIND == "edit" and self.params != method.PARAMS:
            problems.append(f"params: {self.method} is a closed-form edit of {method.PARAMS} only")
        if self.params == "lora" and self.lora_rank < 1:
            problems.append("lora_rank: must be >= 1")
        if self.domain_correction and self.method != "duge":
            problems.append(f"domain_correction: an option of duge, not of {self.method}")
        known_hyper = set(method.DEFAULTS if method else {}) | set(domain.DEFAULTS if self.domain_correction else {})
        if unknown_hyper := set(self.hyper) - known_hyper:
            problems.append(f"hyper: {self.method} has no {', '.join(sorted(unknown_hyper))}")
        if problems:
            raise ConfigError("; ".join(problems))
