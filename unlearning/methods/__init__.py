"""Unlearning methods, one file each, one loss function (or one closed-form edit) each (DESIGN.md,
"The method").

Every loss takes a `StepContext` and returns tensors keyed "forget", and optionally "preserve" and
"regularise" (summed by the one training loop, with gradient surgery between forget and preserve
when asked), plus "log/..." values for the progress bar:

- `duge`: Lethe's decremental step (duge.py);
- `esd-x`, `esd-u`: ESD negative guidance on cross-attention / on the other weights (Gandikota 2023);
- `ablation`: model-based Concept Ablation towards the anchor prompt (Kumari 2023);
- `rgd`: restricted gradient — ascent on the target, descent on a diversified retain set (Ko 2024);
  it is in `METHODS_WITH_SURGERY`, so the loop always applies gradient surgery to it;
- `uce`: Unified Concept Editing (Gandikota 2024), in `CLOSED_FORM`: `uce.edit` rewrites attn2 K/V
  once instead of a loss per step, and the loop skips its training steps.

`METHOD_PARAMS` is the parameter set each method trains unless the request names another.
"""

from __future__ import annotations

from typing import Callable

from unlearning.methods import ablation, duge, esd_u, esd_x, rgd, uce

METHODS: dict[str, Callable] = {
    "duge": duge.loss, "esd-x": esd_x.loss, "esd-u": esd_u.loss, "ablation": ablation.loss, "rgd": rgd.loss,
    "uce": uce.edit,
}
METHOD_DEFAULTS: dict[str, dict] = {
    "duge": duge.DEFAULTS, "esd-x": esd_x.DEFAULTS, "esd-u": esd_u.DEFAULTS, "ablation": ablation.DEFAULTS,
    "rgd": rgd.DEFAULTS, "uce": uce.DEFAULTS,
}
METHOD_PARAMS: dict[str, str] = {
    "duge": "xattn-kv", "esd-x": "xattn-kv", "esd-u": "non-xattn", "ablation": "xattn-kv", "rgd": "xattn-kv",
    "uce": "xattn-kv",
}
METHODS_WITH_SURGERY = frozenset({"rgd"})  # restricted gradient is the method, not an option
CLOSED_FORM = frozenset({"uce"})  # an edit of the trained tensors, not a loss; only its METHOD_PARAMS set
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
DEFAULT_METHOD = "duge"


def get_method(name: str) -> Callable:
    """Raises ValueError for unknown methods."""
    if name in METHODS:
        return METHODS[name]
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}")
