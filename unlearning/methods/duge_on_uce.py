"""DUGE on top of the closed form: continual UCE's edit first, then DUGE's three losses with broad prior
preservation (issue 24's "DUGE fine-tuning on top of the closed form", docs/erasure.md).

Why both: a K/V edit of the concept's tokens (continual_uce.py) erases the concept wherever its words
are, keeps everything else through the broad Gram G, and is solved from the base at every request — but
it cannot reach a prompt that draws the concept *without* its words (the sweep's leak: the base draws
circles for "the finding in the middle"), since those prompts' tokens are held by G. A gradient step on
the UNet's own outputs (duge.py) reaches them — what makes it draw the concept is trained away, not a
token — but with a fixed anchor it floods the words no request named (squares twice as often). So:

1. the loop applies continual UCE's edit to the attn2 K/V weights, from the base, with the lineage's
   terms (unlearning/loop.py, `START`): W = W₀R (continual_uce.py, module docstring);
2. then trains DUGE's losses (duge.py, L_ca + λ_pp L_pp + λ_reg L_reg) from there, with the parent θ_p
   (the version before this request) as teacher, and the preserve set extended by `BROAD_PROMPTS`
   prompts of the method's half of the vocabulary (`broad_prompts`, distilled from the parent: the
   gradient's counterpart of G — L_pp = ‖ε_θ(z_t, c) − sg ε_p(z_t, c)‖² over them too);
3. L_reg anchors at the edit's solution W₀R (the loop's start edit), not at W₀: the regulariser keeps
   the steps near what the closed form solved, instead of undoing it.

In a sequence the next request re-solves the K/V weights from the base (step 1) and trains again; the
steps of earlier requests are carried by the replay set in L_pp (the parent's images of every concept
erased before), not by the weights.
"""

from __future__ import annotations

from unlearning.methods import continual_uce, duge
from unlearning.methods.context import StepContext

KIND = "loss"
START = "continual-uce"  # the closed form the loop applies before the first step
PARAMS = "xattn-kv"  # the closed form's tensors, trained further
PROMPTS_PER_CONCEPT = continual_uce.PROMPTS_PER_CONCEPT
PRESERVE_PER_CONCEPT = continual_uce.PRESERVE_PER_CONCEPT
PROMPT_TEMPLATES = continual_uce.PROMPT_TEMPLATES
BROAD_PROMPTS = 256  # broad preserve prompts, one parent image each (the closed form's G uses its own 1000)
DEFAULTS = {**continual_uce.DEFAULTS, **duge.DEFAULTS}


def loss(ctx: StepContext):
    """DUGE's three losses (duge.py), from the closed form's solution."""
    return duge.loss(ctx)
