"""Continual UCE: the closed-form K/V edit of UCE (Gandikota et al. WACV 2024) over every aligned
token of many phrasings (MACE's refinement, Lu et al. CVPR 2024), made continual by construction and
hardened against adversarial embeddings (RECE, Gong et al. ECCV 2024).

Every attn2 to_k / to_v weight W maps token embeddings e (D = the width cross-attention reads:
unlearning/conditioning.py — one encoder's last hidden state for SD1.x/2.x, both encoders' penultimate
states concatenated for SDXL, 2048 wide). SDXL's pooled embedding (`text_embeds`, through `add_embedding`)
is left alone: it is one vector per prompt added to the timestep embedding, not a token any K/V reads, so
the token pairs (e, ê) this form solves over do not exist there, and R (which acts on token embeddings)
cannot be applied to it. The concept may still reach the image through it, weakly (a global bias, not a
place): the gate measures what the edit leaves on SDXL rather than assuming it is nothing. Each erased
concept c contributes the pairs (e_i, ê_i) of its target prompts' tokens and the anchor prompts'
tokens (uce.aligned_pairs), through two D x D sums

    A_c = Σ_i ê_i e_iᵀ,    B_c = Σ_i e_i e_iᵀ,

the retained concepts, in many contexts, contribute the preserve Gram P = Σ_j p_j p_jᵀ over every
token of the preserve prompts, and everything else the text encoder knows contributes the broad Gram
G = Σ_k g_k g_kᵀ over every token of `broad_prompts` prompts of its own vocabulary (MACE's cached
generic-prompt covariance, Lu et al. CVPR 2024, sec. 3.2; the words are the method's half of the
vocabulary, unlearning/prompts.py `broad_prompts`, so the sweep judges on words the edit never kept).
Each request re-solves **from the base** W₀:

    W = W₀ R,   R = (s_e Σ_c A_c + s_p P + s_b G + λ I)(s_e Σ_c B_c + s_p P + s_b G + λ I)⁻¹

the minimiser of Σ_c Σ_i s_e ‖W e_i − W₀ ê_i‖² + s_p Σ_j ‖W p_j − W₀ p_j‖² + s_b Σ_k ‖W g_k − W₀ g_k‖²
+ λ ‖W − W₀‖²_F (set the gradient to zero: W (s_e ΣB + s_p P + s_b G + λI) = W₀ (s_e ΣA + s_p P + s_b G
+ λI)).

Why G: R = I + Σ_i (ê_i − e_i) e_iᵀ (s_e ΣB + s_p P + s_b G + λI)⁻¹ moves *every* embedding x by the
edit's directions, weighted by x's similarity to the concept's tokens in that metric. Without G, the
directions no preserve prompt covers are held only by λ, and a prompt that points away from the concept
there is pushed onto it: relocation (a word that drew squares draws circles, 0 → 19 of 32), and the
anchor floods what no request named (bench/RESULTS.md, issue 24). With G, every direction the
vocabulary uses is held, and the edit is confined to what sets the concept's tokens apart.

Since every target is W₀ times an embedding, one R serves every layer. A sequence of requests therefore
equals erasing all their concepts at once: nothing drifts from step to step, and an earlier concept
cannot rebound because its terms stay in the sums. The terms (A_c, B_c per concept) are the version's lineage artifact
(`lineage.safetensors`): the sums it was solved with, in seconds. P is rebuilt at every request from
what is retained *then* (a concept erased later must not stay in the preserve set).

Every concept erased earlier is solved again at each request from the request's own pairs of it
(`ctx.earlier`: phrasings that avoid every concept erased so far, this request's included, towards an
anchor that is not erased). The parent's terms cannot be reused as they are: they pair every token of
phrasings that may name this request's target ("a dotted circle" with "a dotted square" asks
W e_dotted = W₀ e_dotted, i.e. keep dotted), and a concept's anchor may be this request's target
(circle → square, then square). Reused, they held the six-step sequence's fourth concept, dotted, at
UA 0.74 / 0.40 (gate / held-out) where erasing it alone gives 1.00 / 1.00 (bench/RESULTS.md). So the
sums a version is solved with are those of erasing its lineage's concepts at once. The lineage's terms
(and each concept's anchor, "<concept>::anchor", the word's UTF-8 bytes) are what the version was
solved with: its artifact, kept as they are for a concept this request has no pairs of.

Each earlier concept's terms (fresh or kept) can weigh `earlier_scale` times this request's in the sums:
R = (s_e Σ_c w_c A_c + …)(s_e Σ_c w_c B_c + …)⁻¹ with w = 1 for this request's concept. Why: a later request's
pairs compete with an earlier concept's for the same directions, and a style request reopened a prompt circle's
own version had erased (the attack's "lewis invented learn jewelry jewelry red disc, solid": 1 of 32 after circle,
11 after circle → striped, 13 after circle → dotted, 0 after circle → star; 5 and 3 of 32 with w = 3 and 10).
Off (1) by default: with RECE's 10 rounds it did not combine (bench/RESULTS.md, 2026-12-07 late morning). The
lineage keeps the terms unweighted.

Prefixed pairs (`PREFIXED_PROMPTS`, unlearning/prompts.py `with_prefixes`): besides the world's phrasings,
each concept's pairs include phrasings with 1–5 words of the method's half of the vocabulary prepended to
both sides ("paper ridge a drawing of one circle" with "paper ridge a drawing of one square"). A contextual
text encoder moves the concept word's embedding with what precedes it; a prepended-token attack (P4D,
UnlearnDiffAtk: docs/erasure.md) searches exactly there, and found "paper horse balance circular curve a
drawing of one circle, …" outside the span the world's phrasings cover (ASR 1/6 on the main job's first
request). With 80 prefixed pairs the same attack, seeds and budget find nothing (0/6; bench/RESULTS.md,
2026-12-07) — but that prompt itself still draws circle on the edited model, 27 of 32 fresh seeds: the pairs
moved the optimiser, not the erasure (2026-12-07 afternoon; the gate now tries it as a known attack). The
prefixes are random words, not the attack's: the attack still searches the whole vocabulary, and the sweep
judges the other half.

Relocation rounds (`relocation_rounds`, off by default): R moves every token x by Σ_i (ê_i − e_i) a_i(x), and
where x's coefficient a_i(x) is negative it moves x *towards* the concept — a vocabulary prompt that drew
squares draws circles (the sweep's relocations, which G bounds but does not remove: docs/erasure.md). The
push of x towards concept c is linear in x: push_c(x) = ⟨(R − I)x, u_c⟩_M / ‖u_c‖²_M, with u_c the mean of
c's word-token differences e − ê and M = Σ_l W₀_lᵀ W₀_l (what K/V read), so c's own tokens score about −1.
Each round takes the tokens of `RELOCATION_POOL` other broad prompts of the method's half of the vocabulary
whose push exceeds τ (`relocation_threshold`) for any concept solved now, adds them to the keep term with
weight s_r (`relocation_scale`) — W x = W₀ x asked of exactly the tokens the edit relocates — and solves
again (after RECE's rounds). This is adversarial preservation in the closed form (Bui et al., "Erasing
Undesirable Concepts in Diffusion Models with Adversarial Preservation", NeurIPS 2024: keep what the erasure
moves most), one-sided: only a push towards a concept is held, a push away from it is the erasure itself.
With `relocation_push_only` a selected token's push alone is held (s_r ⟨Δx, u_c⟩²_M / ‖u_c‖²_M, solved exactly:
unlearning/methods/relocation.py `solve_push_held`), the rest of how R moves it left free; holding whole tokens
cost the erased concepts' margin against the attack (bench/RESULTS.md, 2026-12-07 morning). With
`relocation_current_only` only pushes towards this request's concept are watched: holding the pushes towards
circle at striped's request drew circle again on the known attacks (17 of 32 against 9 with RECE-10; 2026-12-07
late morning), and circle's relocations were never the failing ones. With `relocation_away_threshold` τ_a > 0 a
pool token pushed *away* from the concept by more than τ_a (push < −τ_a) is held too: the edit carries it
towards the anchor as if it were the concept, which is the anchor's flood over the vocabulary (the broad
retention's shift: solid 0.177 → 0.284 of the style head's verdicts at striped's request, 2026-12-07 late
morning). The push hold is sign-blind, so the same closed form holds it. It cost circle's leak (132–137 of 154
not drawn, 139 needed; 2026-12-07 from 13:27): the words pushed furthest away from circle are circle's near
words, and a prompt of them that the parent draws circles for is one the erasure must move. With
`relocation_away_screen` the loop judges the parent's image of each pool prompt whose tokens a round would hold
away (one seed, mining's: unlearning/mining.py), and the prompts it draws the request's concept for are not
held away — a flood is a push towards the anchor of a prompt that did not draw the concept.

Variant pairs (`variant_prompts`, off by default; unlearning/prompts.py `with_variants`): besides the world's
phrasings, each concept's pairs include phrasings whose word is one of its rule-made variants of the method's half
(`name_variants(part="method")`: misspellings, casing, spelt-out letters, punctuation) with the anchor prompt as
it is. The sweep judges the other half: does the candidate draw the concept where a user types "circel" or
"c i r c l e"? Solved on the names alone, 132–143 of circle's 154 such prompts were not drawn, against the 139
the leak bound needs (bench/RESULTS.md, 2026-12-07 from 13:27). With `relocation_variants` the rounds' pool
also holds prompts of the method-half words' rule-made variants (prompts.py `variant_prompts`: "papre", "p a p e
r"): the pieces and single letters a pool of whole words never shows. What each measured: docs/erasure.md.

Hardening (RECE, eq. 6–7): the embedding that brings the concept back under the edited weights is the
minimiser of Σ_l ‖W_l e′ − W₀_l e‖² + ρ‖e′‖², e′ = (ρI + Σ_l W_lᵀ W_l)⁻¹ Σ_l W_lᵀ W₀_l e; with W_l =
W₀_l R and M = Σ_l W₀_lᵀ W₀_l this is e′ = (ρI + Rᵀ M R)⁻¹ Rᵀ M e. Each of `adversarial_rounds` rounds
adds the pairs (e′_i, ê_i) of the target's tokens to its terms and solves again. ρ is
`adversarial_ridge` times the mean eigenvalue of M (a scale-free choice). By default every row of the pairs is
hardened, the context tokens' too (e ≈ ê there, so each round adds another pair that keeps the token: at a
style request, the object words of its phrasings); with `adversarial_words_only` only the concept word's own
token rows are, as RECE hardens the concept's embedding (bench/RESULTS.md, 2026-12-07 late morning: the known
prompts after circle → striped at 10 rounds 21, 9, 9 of 32 with every row, 1, 1, 7 with the word's).

An MMDiT (SD3, FLUX) is edited on its `text-proj` set (uce.py's docstring says why these two maps):
`context_embedder` is a map of token embeddings, solved exactly as above (one R over the joint text
tokens' width, its terms "<concept>::erase_cross" / "::erase_gram"). The pooled projection
`time_text_embed.text_embedder.linear_1` is solved the same way in the pooled space, by the same code:
each prompt's pooled embedding p_i (target) paired with the anchor prompt's p*_i, the preserve prompts'
pooled embeddings as P, the broad prompts' as G where given (`broad_pooled_gram`), RECE's rounds over its
own base Gram, its own R_pooled, and its own lineage terms ("<concept>::pooled_cross", "::pooled_gram"),
re-solved from the base at every request like the token terms. Without it the concept would still reach
every block's AdaLN through the pooled embedding, a global signal that the token edit cannot touch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearning.methods.context import EditContext, EncodedPairs
from unlearning.methods.relocation import concept_direction, relocation_rounds, solve_push_held
from unlearning.methods.uce import EDITABLE, POOLED, aligned_pairs

KIND = "edit"
PARAMS = "xattn-kv"  # the only set a K/V edit can touch
MMDIT_PARAMS = "text-proj"  # an MMDiT's projections that see the text alone (unlearning/parameters.py)
PROMPTS_PER_CONCEPT = 80  # target/anchor pairs per concept, from the world's erase templates
PRESERVE_PER_CONCEPT = 12  # preserve prompts per retained concept: the retained world in many contexts
PROMPT_TEMPLATES = "erase"
PREFIXED_PROMPTS = 80  # more pairs per concept, 1-5 vocabulary words prepended (module docstring)
BROAD_PROMPTS = 1000  # vocabulary prompts of the broad Gram G (1000 x 32 tokens: every direction the words use)
DEFAULTS = {
    "erase_scale": 1.0,
    "preserve_scale": 0.1,
    "broad_scale": 1.0,  # s_b, per token: bench/attack.py chose it (0.1-1 hold relocation; 10 stops erasing)
    "lambda_identity": 0.1,
    "adversarial_rounds": 2,
    "adversarial_ridge": 0.1,
    "adversarial_words_only": 0.0,  # 1: RECE's rounds harden the concept word's tokens only, not its contexts'
    "null_space_energy": 0.0,  # > 0: confine the update to the broad Gram's null space at this energy (SPEED)
    "relocation_rounds": 0,  # > 0: rounds of holding the pool tokens the edit pushes towards a concept (docstring)
    "relocation_threshold": 0.25,  # τ: a push this fraction of the concept's own mean shift selects a token
    "relocation_scale": 3.0,  # s_r: the weight of each selected token in the keep term
    "relocation_push_only": 0.0,  # 1: hold only each selected token's push towards the concept, not the token
    "relocation_current_only": 0.0,  # 1: watch pushes towards this request's concept only, not the earlier ones
    "relocation_away_threshold": 0.0,  # τ_a > 0: also hold the pushes away from the concept beyond τ_a (the flood)
    "relocation_away_screen": 0.0,  # 1: not away-held: the pool prompts the parent draws the concept for (judged)
    "earlier_scale": 1.0,  # the weight of each earlier concept's terms against this request's (1: equal)
    "variant_prompts": 0,  # > 0: pairs whose word is a rule-made variant of the method's half (docstring)
    "relocation_variants": 0,  # > 0: the relocation pool also holds this many prompts of words' variants
}
RELOCATION_POOL = 3000  # broad prompts searched for pushed tokens (`relocation_rounds`), apart from G's


# lineage keys: "<concept>::erase_cross" (A_c), "...::erase_gram" (B_c), "...::anchor" (the anchor word);
# an MMDiT's pooled projection: "...::pooled_cross", "...::pooled_gram" (A_c, B_c of the pooled pairs)
CROSS, GRAM, ANCHOR = "::erase_cross", "::erase_gram", "::anchor"
POOLED_CROSS, POOLED_GRAM = "::pooled_cross", "::pooled_gram"


def concept_of(key: str) -> str:
    return key.rsplit("::", 1)[0]


def anchor_tensor(word: str) -> torch.Tensor:
    """The anchor word as a lineage tensor (its UTF-8 bytes, uint8): safetensors holds tensors only."""
    return torch.tensor(list(word.encode("utf-8")), dtype=torch.uint8)


def anchor_of(terms: dict[str, torch.Tensor], concept: str) -> str | None:
    """The anchor `concept`'s terms were computed towards; None where the lineage predates the record."""
    word = terms.get(concept + ANCHOR)
    return None if word is None else bytes(word.tolist()).decode("utf-8")


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
    broad_gram: torch.Tensor | None = None,
    broad_scale: float = 0.0,
    null_space: torch.Tensor | None = None,
    held_gram: torch.Tensor | None = None,
    push_holds: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    metric: torch.Tensor | None = None,
    relocation_scale: float = 0.0,
) -> torch.Tensor:
    """R = (s_e A + s_p P + s_b G + λI)(s_e B + s_p P + s_b G + λI)⁻¹ (module docstring), float64.

    With `null_space` (V, D x m orthonormal), the update is confined to span(V) (SPEED's null-space
    constraint, Li et al. ICLR 2026): R = I + X Vᵀ minimises the same objective, whose normal equation
    restricted to span(V) gives X = s_e (A − B) V (Vᵀ M V)⁻¹ with M = s_e B + s_p P + s_b G + λI. With V = I
    this is the unconstrained R above (I + s_e(A − B)M⁻¹ = (s_e A + …)M⁻¹). `held_gram` (already scaled) joins
    the keep term: the tokens the relocation rounds hold in place. `push_holds` ([(u_c, X_c)], with `metric` M
    and `relocation_scale`) holds only those tokens' push towards each concept (relocation.py `solve_push_held`)."""
    identity = torch.eye(erase_gram.shape[0], dtype=torch.float64, device=erase_gram.device)
    keep = preserve_scale * preserve_gram + lambda_identity * identity
    if broad_gram is not None and broad_scale:
        keep = keep + broad_scale * broad_gram
    if held_gram is not None:
        keep = keep + held_gram
    left, right = erase_scale * erase_cross + keep, erase_scale * erase_gram + keep
    if push_holds:
        if null_space is not None:
            raise ValueError("relocation_push_only and null_space_energy cannot be combined")
        return solve_push_held(left - right, right, push_holds, metric, relocation_scale)  # left − right = s_e(A − B)
    if null_space is None:
        return torch.linalg.solve(right, left.T).T  # right is symmetric: left · right⁻¹
    v = null_space
    restricted = torch.linalg.solve(v.T @ right @ v, v.T)  # (Vᵀ M V)⁻¹ Vᵀ
    return identity + erase_scale * (erase_cross - erase_gram) @ v @ restricted


def null_space_of(gram: torch.Tensor, energy: float) -> torch.Tensor:
    """An orthonormal basis (D x m) of the directions `gram` uses least: the complement of its top
    eigenvectors that together hold `energy` of its trace (SPEED's null space of the retain set)."""
    values, vectors = torch.linalg.eigh(gram)  # ascending
    held = values.flip(0).cumsum(0) / values.sum()
    kept = int((held < energy).sum()) + 1  # top eigenvectors holding `energy` of the trace
    return vectors[:, : gram.shape[0] - kept]


def adversarial_embeddings(
    keys: torch.Tensor, shared: torch.Tensor, base_gram: torch.Tensor, ridge: float
) -> torch.Tensor:
    """RECE's e′ for every row e of `keys` under W = W₀R: (ρI + RᵀMR)⁻¹ RᵀM e, rows out (float64)."""
    identity = torch.eye(shared.shape[0], dtype=torch.float64, device=shared.device)
    rho = ridge * torch.trace(base_gram) / base_gram.shape[0]
    system = rho * identity + shared.T @ base_gram @ shared
    return torch.linalg.solve(system, shared.T @ base_gram @ keys.double().T).T


@dataclass
class FreshTerms:
    """One concept's token pairs (rows e, ê) and its terms A_c, B_c, computed by this request."""

    keys: torch.Tensor
    anchors: torch.Tensor
    cross: torch.Tensor
    gram: torch.Tensor
    anchor: str
    word_rows: torch.Tensor | None = None  # which rows are the concept word's own tokens (None: all rows)

    @classmethod
    def of(cls, pairs: EditContext | EncodedPairs, segments: tuple[int, ...] = ()) -> FreshTerms:
        """The token pairs of `pairs`, each part of the sequence (`segments`, uce.aligned_pairs) on its own."""
        keys, anchors = aligned_pairs(
            pairs.target_embeds, pairs.anchor_embeds, pairs.target_tokens, pairs.anchor_tokens, segments
        )
        # the same gather on the word masks themselves: 1 where a row is a word token, 0 for a context token
        marks, _ = aligned_pairs(
            pairs.target_tokens.unsqueeze(-1).float(),
            pairs.anchor_tokens.unsqueeze(-1).float(),
            pairs.target_tokens,
            pairs.anchor_tokens,
            segments,
        )
        return cls(keys, anchors, *concept_terms(keys, anchors), pairs.anchor, marks[:, 0] > 0.5)

    @classmethod
    def pooled(cls, pairs: EditContext | EncodedPairs) -> FreshTerms:
        """The pooled space's pairs: each target prompt's pooled embedding with its anchor prompt's."""
        keys, anchors = pairs.target_pooled, pairs.anchor_pooled
        return cls(keys, anchors, *concept_terms(keys, anchors), pairs.anchor)


@torch.no_grad()
def edit(ctx: EditContext) -> dict[str, float]:
    """Re-solve every trained weight from the base with the lineage's terms plus this request's: the token
    maps (attn2 K/V, an MMDiT's `context_embedder`) with one R, an MMDiT's pooled projection with its own.

    Sets `ctx.lineage_out` to the new version's terms ("<concept>::erase_cross", "<concept>::erase_gram",
    "<concept>::anchor", and on an MMDiT "<concept>::pooled_cross", "<concept>::pooled_gram", for every erased
    concept, this one included). Every concept erased earlier that `ctx.earlier` has pairs of gets its terms
    computed now from them and hardened with this request's (module docstring); the parent's terms are kept
    only for a concept it has no pairs of.

    Raises:
        ValueError: a trained tensor that is none of these weights; a pooled projection without the pooled
            embeddings of the target, anchor and preserve prompts.
    """
    hyper = {**DEFAULTS, **ctx.hyper}
    if others := [name for name in ctx.trained if not name.endswith(EDITABLE + POOLED)]:
        raise ValueError(
            f"continual UCE edits attn2 to_k/to_v (an MMDiT: its text projections) only, not {', '.join(others[:3])}"
        )
    terms = {k: v.double() if v.is_floating_point() else v for k, v in (ctx.lineage or {}).items()}
    fresh = {pairs.concept: FreshTerms.of(pairs, ctx.segments) for pairs in ctx.earlier}  # computed (and hardened) now
    fresh[ctx.concept] = FreshTerms.of(ctx, ctx.segments)
    tokens = {name: weight for name, weight in ctx.trained.items() if not name.endswith(POOLED)}
    metrics = _re_solve(
        ctx, tokens, fresh, terms, (CROSS, GRAM), ctx.preserve_embeds, ctx.broad_gram, hyper, ctx.relocation_pool
    )
    if pooled := {name: weight for name, weight in ctx.trained.items() if name.endswith(POOLED)}:
        if ctx.target_pooled is None or ctx.anchor_pooled is None or ctx.preserve_pooled is None:
            raise ValueError("continual UCE edits an MMDiT's pooled projection from pooled embeddings; none given")
        fresh_pooled = {
            pairs.concept: FreshTerms.pooled(pairs) for pairs in ctx.earlier if pairs.target_pooled is not None
        }
        fresh_pooled[ctx.concept] = FreshTerms.pooled(ctx)
        solved = _re_solve(
            ctx,
            pooled,
            fresh_pooled,
            terms,
            (POOLED_CROSS, POOLED_GRAM),
            ctx.preserve_pooled,
            ctx.broad_pooled_gram,
            hyper,
        )
        metrics |= {f"pooled_{key}": value for key, value in solved.items()}
    for concept, f in fresh.items():
        if f.anchor:  # an empty anchor (the word dropped) cannot be erased later
            terms[concept + ANCHOR] = anchor_tensor(f.anchor)
    ctx.lineage_out = terms
    return {
        **metrics,
        "concepts": float(len({concept_of(key) for key in terms})),
        "refreshed": float(len(fresh) - 1),
    }


def _re_solve(
    ctx: EditContext,
    trained: dict[str, torch.Tensor],
    fresh: dict[str, FreshTerms],
    terms: dict[str, torch.Tensor],
    suffixes: tuple[str, str],
    preserve: torch.Tensor,
    broad_gram: torch.Tensor | None,
    hyper: dict,
    relocation_pool: torch.Tensor | None = None,
) -> dict[str, float]:
    """Solve one input space's R (the token space, or an MMDiT's pooled space) over the terms of `terms`
    ending in `suffixes` (cross, gram) that `fresh` does not replace and the fresh ones (hardened here, RECE),
    set every weight of `trained` to W₀ R, and write the fresh terms into `terms`. Returns the current
    concept's `erase_residual` and the preserve set's `preserve_drift` (edit's docstring), and with a
    `relocation_pool` how many of its tokens the relocation rounds held."""
    cross_key, gram_key = suffixes
    scales = {k: hyper[k] for k in ("erase_scale", "preserve_scale", "lambda_identity", "broad_scale")}
    broad_gram = None if broad_gram is None else broad_gram.double()
    null_space = None
    if hyper["null_space_energy"]:
        if broad_gram is None:
            raise ValueError("null_space_energy needs the broad Gram (the method's BROAD_PROMPTS)")
        null_space = null_space_of(broad_gram, hyper["null_space_energy"])
    keys, anchors = fresh[ctx.concept].keys, fresh[ctx.concept].anchors
    held = [key for key in terms if concept_of(key) not in fresh]  # kept terms, as the parent left them
    preserve = preserve.reshape(-1, preserve.shape[-1]).double()
    preserve_gram = preserve.T @ preserve
    base = {name: ctx.base_values[name].double() for name in trained}
    base_gram = sum(w.T @ w for w in base.values())

    def weight(concept: str) -> float:  # an earlier concept's terms against this request's (`earlier_scale`)
        return 1.0 if concept == ctx.concept else hyper["earlier_scale"]

    def total(term: str, suffix: str) -> torch.Tensor:  # Σ_c w_c of one term: the fresh ones, then the kept
        fresh_part = sum(weight(c) * getattr(f, term) for c, f in fresh.items())
        return fresh_part + sum(weight(concept_of(key)) * terms[key] for key in held if key.endswith(suffix))

    def shared_map(held_gram: torch.Tensor | None = None, push_holds: dict | None = None) -> torch.Tensor:
        """R over the kept terms and the fresh ones, with the relocation rounds' holds (relocation.py)."""
        return solve(
            total("cross", cross_key),
            total("gram", gram_key),
            preserve_gram,
            broad_gram=broad_gram,
            null_space=null_space,
            held_gram=held_gram,
            push_holds=[(concept_direction(fresh[c].keys, fresh[c].anchors), x) for c, x in (push_holds or {}).items()],
            metric=base_gram,
            relocation_scale=hyper["relocation_scale"],
            **scales,
        )

    shared = shared_map()
    for _ in range(int(hyper["adversarial_rounds"])):  # RECE: add the embeddings that bring each concept back
        for f in fresh.values():
            rows = f.word_rows if hyper["adversarial_words_only"] and f.word_rows is not None else slice(None)
            adversarial = adversarial_embeddings(f.keys[rows], shared, base_gram, hyper["adversarial_ridge"])
            more_cross, more_gram = concept_terms(adversarial, f.anchors[rows])
            f.cross, f.gram = f.cross + more_cross, f.gram + more_gram
        shared = shared_map()
    rounds = {}
    if relocation_pool is not None:
        if hyper["relocation_away_screen"] and ctx.relocation_drawn is None:
            raise ValueError("relocation_away_screen judges the parent's images; no judge was given (the loop's)")
        # the earlier concepts' holds pull against their own erasure (bench/RESULTS.md, 2026-12-07 late morning)
        watched = {ctx.concept: fresh[ctx.concept]} if hyper["relocation_current_only"] else fresh
        drawn = {ctx.concept: ctx.relocation_drawn} if hyper["relocation_away_screen"] else None
        shared, rounds = relocation_rounds(shared, relocation_pool, watched, base_gram, hyper, drawn, shared_map)
    residual_before = residual_after = drift = preserved = 0.0
    for name, weight in trained.items():
        new = base[name] @ shared
        targets = anchors.double() @ base[name].T
        residual_before += float((keys.double() @ weight.double().T - targets).pow(2).sum())
        residual_after += float((keys.double() @ new.T - targets).pow(2).sum())
        drift += float((preserve @ (new - base[name]).T).pow(2).sum())
        preserved += float((preserve @ base[name].T).pow(2).sum())
        weight.copy_(new.to(weight.dtype))
    for concept, f in fresh.items():
        terms[concept + cross_key], terms[concept + gram_key] = f.cross, f.gram
    return {
        "erase_residual": residual_after / max(residual_before, 1e-20),
        "preserve_drift": drift / max(preserved, 1e-20),
        **rounds,
    }
