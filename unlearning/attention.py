"""Recording cross-attention maps: a diffusers attention processor for `attn2` layers.

A copy of diffusers' `AttnProcessor` (the extension point the diffusers examples use, e.g.
`examples/custom_diffusion/train_custom_diffusion.py`) that keeps `attn.get_attention_scores(q, k, mask)`
— the softmax over text tokens — in a store, averaged over heads, so a loss can compare the maps of
concept tokens (docs/design.md, cross-attention loss). Gradients flow through the stored maps.
`word_token_mask` says which tokens are the concept's.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class AttentionStore:
    """Maps of the last forward pass: layer name -> (batch, queries, tokens), mean over heads."""

    def __init__(self):
        self.maps: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self.maps = {}


class RecordingCrossAttnProcessor:
    def __init__(self, store: AttentionStore, name: str):
        self.store = store
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
        attention_probs = attn.get_attention_scores(query, key, attention_mask)
        # (batch*heads, queries, tokens) -> mean over heads: (batch, queries, tokens)
        self.store.maps[self.name] = attention_probs.view(batch_size, attn.heads, *attention_probs.shape[1:]).mean(
            dim=1
        )
        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def record_cross_attention(unet) -> AttentionStore:
    """Install recorders on every attn2 layer of `unet`. Self-attention (attn1) keeps the fused
    scaled-dot-product processor: its maps are not needed, and materialising them costs
    (queries × queries) per head — gigabytes per layer at 512 px."""
    store = AttentionStore()
    processors = {
        name: RecordingCrossAttnProcessor(store, name.removesuffix(".processor"))
        if ".attn2." in name
        else AttnProcessor2_0()
        for name in unet.attn_processors
    }
    unet.set_attn_processor(dict(processors))  # set_attn_processor pops from the dict it is given
    return store


def word_token_mask(tokenizer, prompts: list[str], words: list[str], max_length: int) -> torch.Tensor:
    """(N, max_length) bool: True at the tokens of `words[i]` inside `prompts[i]` (first occurrence)."""
    mask = torch.zeros(len(prompts), max_length, dtype=torch.bool)
    for i, (prompt, word) in enumerate(zip(prompts, words)):
        if not word:
            continue
        ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True).input_ids
        word_ids = tokenizer(word, add_special_tokens=False).input_ids
        for start in range(len(ids) - len(word_ids) + 1):
            if ids[start : start + len(word_ids)] == word_ids:
                mask[i, start : start + len(word_ids)] = True
                break
    return mask
