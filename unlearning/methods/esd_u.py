"""ESD-u (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023, eq. 2 / sec. 3):
the same negative-guidance objective as ESD-x, computed with the frozen parent θ*,

    L = ‖ε_θ(z_t, c_tgt, t) − sg(ε_p(z_t, ∅, t) − η (ε_p(z_t, c_tgt, t) − ε_p(z_t, ∅, t)))‖²,

but trained on the *non-cross-attention* ("unconditional") weights, so the erasure holds whatever the
prompt says — the paper's choice for concepts that are not tied to one word (nudity, objects).
What differs from ESD-x is the parameter set, not the loss: its `PARAMS` is `non-xattn`
(every UNet tensor outside attn2), which a run uses unless `params` names another set.
"""

from __future__ import annotations

import torch

from unlearning.methods import esd_x
from unlearning.methods.context import StepContext

KIND = "loss"
PARAMS = "non-xattn"  # the "unconditional" weights: everything outside attn2
DEFAULTS = dict(esd_x.DEFAULTS)


def loss(ctx: StepContext) -> dict[str, torch.Tensor]:
    return esd_x.loss(ctx)  # one objective; the trained set is what makes it ESD-u
