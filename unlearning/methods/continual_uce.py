"""Continual UCE: the closed-form K/V edit of UCE (Gandikota et al. WACV 2024) over every aligned
token of many phrasings (MACE's refinement, Lu et al. CVPR 2024), made continual by construction and
hardened against adversarial embeddings (RECE, Gong et al. ECCV 2024).

Every attn2 to_k / to_v weight W maps token embeddings e (D = the text encoder's width). Each erased
concept c contributes the pairs (e_i, ê_i) of its target prompts' tokens and the anchor prompts'
tokens (uce.aligned_pairs), through two D x D sums

    A_c = Σ_i ê_i e_iᵀ,    B_c = Σ_i e_i e_iᵀ,

and the retained concepts, in many contexts, contribute the preserve Gram P = Σ_j p_j p_jᵀ over
every token of the preserve prompts. Each request re-solves **from the base** W₀:

    W = W₀ R,   R = (s_e Σ_c A_c + s_p P + λ I)(s_e Σ_c B_c + s_p P + λ I)⁻¹

the minimiser of Σ_c Σ_i s_e ‖W e_i − W₀ ê_i‖² + s_p Σ_j ‖W p_j − W₀ p_j‖² + λ ‖W − W₀‖²_F (set the
gradient to zero: W (s_e ΣB + s_p P + λI) = W₀ (s_e ΣA + s_p P + λI)). Since every target is W₀ times
an embedding, one R serves every layer. A sequence of requests therefore equals erasing all their
concepts at once: nothing drifts from step to step, and an earlier concept cannot rebound because its
terms stay in the sums. The terms (A_c, B_c per concept) are the version's lineage artifact
(`lineage.safetensors`), so the next request — and a revocation, which drops one concept's terms —
re-solves in seconds. P is rebuilt at every request from what is retained *then* (a concept erased
later must not stay in the preserve set).

Hardening (RECE, eq. 6–7): the embedding that brings the concept back under the edited weights is the
minimiser of Σ_l ‖W_l e′ − W₀_l e‖² + ρ‖e′‖², e′ = (ρI + Σ_l W_lᵀ W_l)⁻¹ Σ_l W_lᵀ W₀_l e; with W_l =
W₀_l R and M = Σ_l W₀_lᵀ W₀_l this is e′ = (ρI + Rᵀ M R)⁻¹ Rᵀ M e. Each of `adversarial_rounds` rounds
adds the pairs (e′_i, ê_i) of the target's tokens to its terms and solves again. ρ is
`adversarial_ridge` times the mean eigenvalue of M (a scale-free choice).
"""

from __future__ import annotations

import torch

from unlearning.methods.context import EditContext
from unlearning.methods.uce import EDITABLE, aligned_pairs

KIND = "edit"
PARAMS = "xattn-kv"  # the only set a K/V edit can touch
PROMPTS_PER_CONCEPT = 80  # target/anchor pairs per concept, from the world's erase templates
PRESERVE_PER_CONCEPT = 12  # preserve prompts per retained concept: the retained world in many contexts
PROMPT_TEMPLATES = "erase"
DEFAULTS = {
    "erase_scale": 1.0,
    "preserve_scale": 0.1,
    "lambda_identity": 0.1,
    "adversarial_rounds": 2,
    "adversarial_ridge": 0.1,
}


CROSS, GRAM = "::erase_cross", "::erase_gram"  # lineage keys: "<concept>::erase_cross" (A_c), "...::erase_gram" (B_c)


def concept_of(key: str) -> str:
    return key.rsplit("::", 1)[0]


def concept_terms(keys: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_c, B_c) = (Σ ê eᵀ, Σ e eᵀ) of pairs given as rows of `keys` (e) and `anchors` (ê), float64."""
    e, e_hat = keys.double(), anchors.double()
    return e_hat.T @ e, e.T @ e


def solve(
    erase_cross: torch.Tensor,
    erase_gram: torch.Tensor,
    preserve_gram: torch.Tensor,
    *,
    erase_scale: float,
    preserve_scale: float,
    lambda_identity: float,
) -> torch.Tensor:
    """R = (s_e A + s_p P + λI)(s_e B + s_p P + λI)⁻¹ (module docstring), float64."""
    identity = torch.eye(erase_gram.shape[0], dtype=torch.float64, device=erase_gram.device)
    keep = preserve_scale * preserve_gram + lambda_identity * identity
    left, right = erase_scale * erase_cross + keep, erase_scale * erase_gram + keep
    return torch.linalg.solve(right, left.T).T  # right is symmetric: left · right⁻¹


def adversarial_embeddings(
    keys: torch.Tensor, shared: torch.Tensor, base_gram: torch.Tensor, ridge: float
) -> torch.Tensor:
    """RECE's e′ for every row e of `keys` under W = W₀R: (ρI + RᵀMR)⁻¹ RᵀM e, rows out (float64)."""
    identity = torch.eye(shared.shape[0], dtype=torch.float64, device=shared.device)
    rho = ridge * torch.trace(base_gram) / base_gram.shape[0]
    system = rho * identity + shared.T @ base_gram @ shared
    return torch.linalg.solve(system, shared.T @ base_gram @ keys.double().T).T


def _terms_of(pairs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keys, anchors = aligned_pairs(pairs.target_embeds, pairs.anchor_embeds, pairs.target_tokens, pairs.anchor_tokens)
    return (*concept_terms(keys, anchors), keys)


@torch.no_grad()
def edit(ctx: EditContext) -> dict[str, float]:
    """Re-solve every trained attn2 K/V weight from the base with the lineage's terms plus this request's.

    Sets `ctx.lineage_out` to the new version's terms ("<concept>::erase_cross", "<concept>::erase_gram",
    one pair per erased concept, this one included). Concepts erased earlier whose terms the parent did
    not keep (another method erased them) get theirs computed from `ctx.earlier`.

    Raises:
        ValueError: a trained tensor that is not an attn2 to_k / to_v weight.
    """
    hyper = {**DEFAULTS, **ctx.hyper}
    scales = {k: hyper[k] for k in ("erase_scale", "preserve_scale", "lambda_identity")}
    if others := [name for name in ctx.trained if not name.endswith(EDITABLE)]:
        raise ValueError(f"continual UCE edits attn2 to_k/to_v weights only, not {', '.join(others[:3])}")
    terms = {k: v.double() for k, v in (ctx.lineage or {}).items()}
    kept = {concept_of(key) for key in terms}
    for pairs in ctx.earlier:  # erased before by a method that kept no terms: their pairs, now
        if pairs.concept not in kept:
            terms[pairs.concept + CROSS], terms[pairs.concept + GRAM], _ = _terms_of(pairs)
    keys, anchors = aligned_pairs(ctx.target_embeds, ctx.anchor_embeds, ctx.target_tokens, ctx.anchor_tokens)
    cross, gram = concept_terms(keys, anchors)
    preserve = ctx.preserve_embeds.reshape(-1, ctx.preserve_embeds.shape[-1]).double()
    preserve_gram = preserve.T @ preserve
    base = {name: ctx.base_values[name].double() for name in ctx.trained}
    base_gram = sum(w.T @ w for w in base.values())

    def shared_map() -> torch.Tensor:  # R over the earlier concepts' terms and this request's
        earlier = [key for key in terms if concept_of(key) != ctx.concept]
        total_cross = cross + sum(terms[key] for key in earlier if key.endswith(CROSS))
        total_gram = gram + sum(terms[key] for key in earlier if key.endswith(GRAM))
        return solve(total_cross, total_gram, preserve_gram, **scales)

    shared = shared_map()
    for _ in range(int(hyper["adversarial_rounds"])):  # RECE: add the embeddings that bring the concept back
        adversarial = adversarial_embeddings(keys, shared, base_gram, hyper["adversarial_ridge"])
        more_cross, more_gram = concept_terms(adversarial, anchors)
        cross, gram = cross + more_cross, gram + more_gram
        shared = shared_map()
    residual_before = residual_after = drift = preserved = 0.0
    for name, weight in ctx.trained.items():
        new = base[name] @ shared
        targets = anchors.double() @ base[name].T
        residual_before += float((keys.double() @ weight.double().T - targets).pow(2).sum())
        residual_after += float((keys.double() @ new.T - targets).pow(2).sum())
        drift += float((preserve @ (new - base[name]).T).pow(2).sum())
        preserved += float((preserve @ base[name].T).pow(2).sum())
        weight.copy_(new.to(weight.dtype))
    terms[ctx.concept + CROSS], terms[ctx.concept + GRAM] = cross, gram
    ctx.lineage_out = terms
    return {
        "erase_residual": residual_after / max(residual_before, 1e-20),
        "preserve_drift": drift / max(preserved, 1e-20),
        "concepts": float(len({concept_of(key) for key in terms})),
    }
