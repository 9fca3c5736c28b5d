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
   gradient's counterpart of G — L_pp = ‖ε_θ(z_t, c) − sg ε_p(z_t, c)‖² over them too) — except those the
   parent draws the target for without naming it (unlearning/mining.py: sampled, judged by the world's
   judge): they join the forget set, towards "a <anchor>" — or, with `mined_guidance` η > 0, towards
   what the parent draws for the phrasing without the concept, ε_p(z_t, c_m) − η (ε_p(z_t, c_concept) −
   ε_p(z_t, ∅)) (ESD's negative guidance), which does not flood the anchor over them;
3. L_reg anchors at the edit's solution W₀R (the loop's start edit), not at W₀: the regulariser keeps
   the steps near what the closed form solved, instead of undoing it;
4. with `adversarial_epsilon` > 0, adversarial training in embedding space (R.A.C.E., Kim et al. ECCV
   2024, sec. 3.2: a one-step FGSM attack inside the erasure loop): the condition that brings the
   concept back to the student, one signed-gradient step from the target's,
       c_adv = c_tgt − ε · rms(c_tgt) · sign ∇_c ‖ε_θ(z_t, c) − sg ε_p(z_t, c_tgt)‖² |_{c = c_tgt}
   (rms per token: the bound scales with the encoder's own), is erased too:
       L_adv = ‖ε_θ(z_t, c_adv) − sg ε_p(z_t, c_anc)‖², added to the forget term.
   The gate's attack prepends typeable tokens, which moves every token's contextual embedding: this
   trains the erasure to hold in a ball around the target's.

In a sequence the next request re-solves the K/V weights from the base (step 1) and trains again; the
steps of earlier requests are carried by the replay set in L_pp (the parent's images of every concept
erased before), not by the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearning.conditioning import Condition
from unlearning.methods import continual_uce, duge
from unlearning.methods.context import StepContext

KIND = "loss"
START = "continual-uce"  # the closed form the loop applies before the first step
PARAMS = "xattn-kv"  # the closed form's tensors, trained further
PROMPTS_PER_CONCEPT = continual_uce.PROMPTS_PER_CONCEPT
PRESERVE_PER_CONCEPT = continual_uce.PRESERVE_PER_CONCEPT
PROMPT_TEMPLATES = continual_uce.PROMPT_TEMPLATES
PREFIXED_PROMPTS = continual_uce.PREFIXED_PROMPTS  # step 1 is continual UCE's edit over the same pairs
BROAD_PROMPTS = 256  # broad preserve prompts, one parent image each (the closed form's G uses its own 1000)
MINE = True  # those of them the parent draws the target for are erased, not preserved (unlearning/mining.py)
DEFAULTS = {**continual_uce.DEFAULTS, **duge.DEFAULTS, "adversarial_epsilon": 0.0, "mined_guidance": 0.0}


def adversarial_condition(ctx: StepContext, epsilon: float) -> torch.Tensor:
    """c_adv (module docstring, 4): one FGSM step from the target's condition towards the parent's concept."""
    with torch.no_grad():
        concept = ctx.parent(ctx.forget_noisy, ctx.forget_timesteps, ctx.target_embeds).sample
    # the attack moves the tokens cross-attention reads; SDXL's pooled embedding and time ids stay the target's
    target = ctx.target_embeds
    hidden = target.hidden if isinstance(target, Condition) else target
    condition = hidden.detach().clone().requires_grad_(True)
    attacked = target.with_hidden(condition) if isinstance(target, Condition) else condition
    attack = F.mse_loss(ctx.student(ctx.forget_noisy, ctx.forget_timesteps, attacked).sample, concept)
    (gradient,) = torch.autograd.grad(attack, condition)
    rms = condition.detach().pow(2).mean(dim=-1, keepdim=True).sqrt()
    adversarial = (condition.detach() - epsilon * rms * gradient.sign()).detach()
    return target.with_hidden(adversarial) if isinstance(target, Condition) else adversarial


def mined_target(ctx: StepContext, eta: float):
    """The forget target of the mined rows by negative guidance (module docstring, 2; ESD, Gandikota et al.
    ICCV 2023, eq. 2): ε_p(z_t, c_m) − η (ε_p(z_t, c_concept) − ε_p(z_t, ∅)) — what the parent draws for
    the mined phrasing, without the concept — in place of the anchor's prediction; other rows unchanged."""

    def target(anchor_prediction: torch.Tensor) -> torch.Tensor:
        noisy, t = ctx.forget_noisy, ctx.forget_timesteps
        own = ctx.parent(noisy, t, ctx.target_embeds).sample
        concept = ctx.parent(noisy, t, ctx.concept_embeds).sample
        empty = ctx.parent(noisy, t, ctx.empty_embeds).sample
        guided = own - eta * (concept - empty)
        return torch.where(ctx.forget_mined.view(-1, 1, 1, 1), guided, anchor_prediction)

    return target


def loss(ctx: StepContext) -> dict[str, torch.Tensor]:
    """DUGE's three losses (duge.py), from the closed form's solution, the mined rows by negative guidance
    and L_adv when asked."""
    hyper = {**DEFAULTS, **ctx.hyper}
    epsilon, eta = hyper["adversarial_epsilon"], hyper["mined_guidance"]
    adversarial = adversarial_condition(ctx, epsilon) if epsilon else None
    guided = eta and ctx.forget_mined is not None and bool(ctx.forget_mined.any())
    anchor = {}  # the parent's anchor prediction, as DUGE computes it: L_adv's target too

    def forget_target(anchor_prediction: torch.Tensor) -> torch.Tensor:
        anchor["prediction"] = anchor_prediction
        return mined_target(ctx, eta)(anchor_prediction) if guided else anchor_prediction

    # after the attack: the attention maps it records are the loss's own
    terms = duge.loss(ctx, forget_target=forget_target)
    if adversarial is not None:
        erased = F.mse_loss(
            ctx.student(ctx.forget_noisy, ctx.forget_timesteps, adversarial).sample, anchor["prediction"]
        )
        terms["forget"] = terms["forget"] + erased
        terms["log/adv_eps"] = erased.detach()
    return terms
