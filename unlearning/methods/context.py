"""What every method's loss function receives for one step (the one training loop builds it).

A loss calls `student` and `parent` as `(z_t, t, condition)`; the conditions (`*_embeds`) are what the
architecture's UNet reads (unlearning/conditioning.py `Condition`: SDXL's pooled embedding and time ids go
with the hidden states), or plain hidden-state tensors for a UNet conditioned on them alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from unlearning.attention import AttentionStore


@dataclass
class StepContext:
    student: Callable  # the UNet being trained (θ), initialised from the parent, called (z_t, t, condition)
    parent: Callable  # frozen parent version θ_p
    student_maps: AttentionStore  # attn2 maps of the student's last forward pass
    parent_maps: AttentionStore
    # forget batch: noised latents of images the parent made for the *anchor* prompts
    forget_noisy: torch.Tensor  # z_t, (B, C, H, W)
    forget_noise: torch.Tensor  # ε used to make z_t
    forget_timesteps: torch.Tensor
    target_embeds: torch.Tensor  # c_tgt, (B, T, D)
    anchor_embeds: torch.Tensor  # c_anc
    empty_embeds: torch.Tensor  # c_∅ (the empty prompt), (B, T, D)
    target_tokens: torch.Tensor  # (B, T) bool, tokens of the target word in c_tgt
    anchor_tokens: torch.Tensor  # (B, T) bool, tokens of the anchor word in c_anc
    # preserve batch: noised latents of the parent's images for preserve + replay prompts
    preserve_noisy: torch.Tensor
    preserve_noise: torch.Tensor
    preserve_timesteps: torch.Tensor
    preserve_embeds: torch.Tensor
    # L2-SP anchor: the *base* model's values of the trained tensors (θ_0)
    trained: dict[str, torch.Tensor]  # the trained tensors by UNet name (lora: the merged W + BA, differentiable)
    base_values: dict[str, torch.Tensor]
    hyper: dict  # method hyper-parameters (λ's, η, ...)
    # what the UNet predicts for each batch (unlearning/conditioning.py `prediction_target`): the noise ε, or
    # the velocity v = √ᾱ ε − √(1−ᾱ) z_0 for a v-prediction model (SD2.x); None: the noise (ε-prediction)
    forget_target: torch.Tensor | None = None
    preserve_target: torch.Tensor | None = None
    # mined forget rows (unlearning/mining.py): which rows of the forget batch are mined prompts, and the
    # condition of the target named plainly ("a circle"), for a method that erases them by negative guidance
    forget_mined: torch.Tensor | None = None  # (B,) bool
    concept_embeds: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.forget_target is None:
            self.forget_target = self.forget_noise
        if self.preserve_target is None:
            self.preserve_target = self.preserve_noise


@dataclass
class EditContext:
    """What a closed-form method's `edit` receives (no images, no steps: prompt embeddings only)."""

    trained: dict[str, torch.nn.Parameter]  # the tensors to edit in place, by UNet name (θ, from the parent)
    base_values: dict[str, torch.Tensor]  # θ_0 of the same tensors (the base model's)
    target_embeds: torch.Tensor  # c_tgt, (B, T, D): every prompt naming the target
    anchor_embeds: torch.Tensor  # c_anc: the same prompts with the target replaced by the anchor
    target_tokens: torch.Tensor  # (B, T) bool, tokens of the target word
    anchor_tokens: torch.Tensor  # (B, T) bool, tokens of the anchor word
    preserve_embeds: torch.Tensor  # (P, T, D): preserve prompts (retained concepts)
    replay_embeds: torch.Tensor  # (R, T, D): prompts of the concepts erased earlier
    hyper: dict
    concept: str = ""  # the target's name (closed forms that keep terms per concept)
    anchor: str = ""  # the word the target's prompts are mapped to (recorded with a closed form's terms)
    earlier: tuple[EncodedPairs, ...] = ()  # target/anchor pairs of each concept erased earlier
    lineage: dict[str, torch.Tensor] | None = None  # the parent version's lineage terms, if it kept any
    broad_gram: torch.Tensor | None = None  # (D, D) Σ g gᵀ over the broad prompts' tokens (a method's BROAD_PROMPTS)
    lineage_out: dict[str, torch.Tensor] | None = field(default=None)  # set by an edit that keeps lineage terms
    # (N, D) token embeddings of other broad prompts of the method's half of the vocabulary: where a closed form
    # looks for the tokens its edit pushes towards an erased concept (continual_uce.py `relocation_rounds`)
    relocation_pool: torch.Tensor | None = None
    # given a boolean mask over the pool's rows (N·T), which of them belong to a prompt the parent draws the
    # request's concept for, judged on its image (`relocation_away_screen`); None where no judge is given
    relocation_drawn: Callable[[torch.Tensor], torch.Tensor] | None = None
    # an MMDiT's (SD3, FLUX) pooled embedding of the same prompts, (B, P) each, what the pooled projection
    # `time_text_embed.text_embedder.linear_1` reads (the `text-proj` set); None where nothing edits it
    target_pooled: torch.Tensor | None = None
    anchor_pooled: torch.Tensor | None = None
    preserve_pooled: torch.Tensor | None = None
    replay_pooled: torch.Tensor | None = None
    broad_pooled_gram: torch.Tensor | None = None  # (P, P) Σ g gᵀ over the broad prompts' pooled embeddings
    # the lengths of the token sequence's parts, one per encoder, each paired on its own (SD3: CLIP's 77, T5's
    # 256; unlearning/conditioning.py `segments`); () is one part
    segments: tuple[int, ...] = ()


@dataclass
class EncodedPairs:
    """One concept's target/anchor prompt pairs, encoded: what a closed form pairs token by token."""

    concept: str
    target_embeds: torch.Tensor
    anchor_embeds: torch.Tensor
    target_tokens: torch.Tensor
    anchor_tokens: torch.Tensor
    anchor: str = ""  # the anchor word of these pairs
    target_pooled: torch.Tensor | None = None  # an MMDiT's pooled embeddings of the same prompts, (B, P)
    anchor_pooled: torch.Tensor | None = None
