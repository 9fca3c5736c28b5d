"""Unlearning methods, one file each, one loss function each (DESIGN.md, "The method").

Every loss takes a `StepContext` and returns tensors keyed "forget", and optionally "preserve" and
"regularise" (summed by the one training loop, with gradient surgery between forget and preserve
when asked), plus "log/..." values for the progress bar.

`METHOD_NAMES` is what requests may name; the baselines `esd-u`, `ablation`, `rgd` and `uce` are named
by DESIGN.md and not implemented yet — asking to run them is refused at setup (see `get_method`).
"""

from __future__ import annotations

from typing import Callable

from unlearning.methods import duge, esd_x

METHODS: dict[str, Callable] = {"duge": duge.loss, "esd-x": esd_x.loss}
METHOD_DEFAULTS: dict[str, dict] = {"duge": duge.DEFAULTS, "esd-x": esd_x.DEFAULTS}
METHOD_NAMES: tuple[str, ...] = ("duge", "esd-x", "esd-u", "ablation", "rgd", "uce")
DEFAULT_METHOD = "duge"


def get_method(name: str) -> Callable:
    """Raises ValueError for unknown or not-yet-implemented methods."""
    if name in METHODS:
        return METHODS[name]
    if name in METHOD_NAMES:
        raise ValueError(f"method {name!r} is planned but not implemented yet; available: {', '.join(METHODS)}")
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}")
