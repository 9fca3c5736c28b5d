"""Unlearning methods, one file each (docs/design.md, "The method"); this table names them.

Every method module has the same record:
- `KIND`: "loss" — `loss(ctx: StepContext) -> dict` returns tensors keyed "forget" and optionally
  "preserve" and "regularise" (summed by the one training loop, with gradient surgery between forget
  and preserve when asked), plus "log/..." values for the progress bar; or "edit" — a closed-form edit,
  `edit(ctx: EditContext) -> dict`, applied once instead of training steps;
- `PARAMS`: the parameter set it trains unless the request names another (unlearning/parameters.py);
- `DEFAULTS`: its hyper-parameters (a request may override any of them, and only them);
- `ALWAYS_SURGERY` (optional, True for rgd): gradient surgery is the method, not an option;
- `START` (optional, a loss method): the closed-form method the loop applies before the first step;
- `MMDIT_PARAMS` (optional, a closed form): the set it edits on an MMDiT (SD3, FLUX), whose text reaches the
  image through joint attention rather than attn2; a method without it is refused there
  (unlearning/conditioning.py `mmdit_parameter_set`).

The methods: `duge` (Lethe's decremental step), `esd-x` / `esd-u` (ESD negative guidance on
cross-attention / on the other weights, Gandikota 2023), `ablation` (Concept Ablation, Kumari 2023),
`rgd` (restricted gradient, Ko 2024), `uce` (Unified Concept Editing, Gandikota 2024), `continual-uce`
(UCE over every aligned token of many phrasings, re-solved from the base with the lineage's terms at
every request, hardened with RECE's adversarial embeddings), `duge-on-uce` (continual-uce's edit, then
DUGE's losses with broad prior preservation).

A method may also set `PROMPTS_PER_CONCEPT`, `PRESERVE_PER_CONCEPT` and `PROMPT_TEMPLATES` (the
world's template set), the defaults of the config fields of the same names.

This module imports no torch: the ledger and `lethe submit` know the names without loading a model.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module in this package: the one record of which methods exist
_MODULES = {
    "duge": "duge",
    "esd-x": "esd_x",
    "esd-u": "esd_u",
    "ablation": "ablation",
    "rgd": "rgd",
    "uce": "uce",
    "continual-uce": "continual_uce",
    "duge-on-uce": "duge_on_uce",
}
METHOD_NAMES: tuple[str, ...] = tuple(_MODULES)
DEFAULT_METHOD = "continual-uce"  # the best on bench/methods.py (bench/RESULTS.md): closed form, seconds a request
# The parameter sets a method may train (unlearning/parameters.py says which tensors each holds).
# `text-proj` is an MMDiT's (SD3, FLUX): its projections that see the text alone.
PARAMETER_SETS = ("xattn-kv", "xattn", "non-xattn", "full", "lora", "text-proj")
# The UnlearnConfig fields (unlearning/loop.py) a request may set as its `options`; the operator's
# settings decide everything else (a test checks these are fields of UnlearnConfig).
REQUEST_OPTIONS = (
    "params",
    "lora_rank",
    "steps",
    "batch_size",
    "lr",
    "gradient_surgery",
    "domain_correction",
    "seed",
    "prompts_per_concept",
    "hyper",
)


class UnknownMethod(ValueError):
    """No method has this name."""


def get_method(name: str) -> ModuleType:
    """The method's module (imports torch).

    Raises:
        UnknownMethod: no method has this name.
    """
    if name not in _MODULES:
        raise UnknownMethod(f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}")
    return importlib.import_module(f"unlearning.methods.{_MODULES[name]}")
