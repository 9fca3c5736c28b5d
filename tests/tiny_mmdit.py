"""Tiny SD3 and FLUX pipelines (MMDiT transformers) built from constructor arguments, with the tokenizers they
read made offline: the CLIP BPE files tests/tiny_models.py writes, and a T5 Unigram tokenizer built in code
(transformers' `T5TokenizerFast` from a list of (piece, score)). Sizes are diffusers' pipeline-test dummies
(tests/pipelines/stable_diffusion_3, tests/pipelines/flux), except where noted."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from tests.tiny_models import WORDS, _tiny_clip_text, tiny_clip_tokenizer

# words of the open world's prompts beyond the concepts (tests/tiny_models.py WORDS): whole pieces, so that a
# concept word is one T5 token wherever it stands; everything else falls back to single characters
T5_WORDS = (*WORDS, *"a an the of in on with photo picture drawing painting image style".split())


def tiny_t5_tokenizer():
    """A T5 tokenizer (SentencePiece-style Unigram: "▁" marks a word's start) over `T5_WORDS` and single
    characters, with T5's special tokens (<pad> 0, </s> 1, <unk> 2) and no sentinel ids, at 512 tokens."""
    from transformers import T5TokenizerFast

    characters = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -5.0) for c in characters] + [("▁" + w, -1.0) for w in dict.fromkeys(T5_WORDS)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def _tiny_t5(tokenizer, d_model: int):
    """A T5 encoder of diffusers' tiny-random-t5 sizes (d_ff 37, d_kv 8, 4 heads), `d_model` wide, 2 layers."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(3)
    return T5EncoderModel(config).eval()


def _tiny_flow_vae(*, latent_channels: int, blocks: int):
    """diffusers' SD3/FLUX dummy AutoencoderKL (4 channels a block, no quant convs, SD3's shift and scale), without
    the mid block's self-attention: FLUX samples 128 x 128 latents through a one-block VAE, and attention over
    their 16,384 positions was 40 % of the FLUX CLI test's time (the VAE is not what these tests check)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


SD3_JOINT = 80  # T5's width; the CLIP pair's 32 + 32 states are zero-padded to it (the dummy's 32 would cut them)


def build_tiny_sd3(folder: Path) -> Path:
    """A `StableDiffusion3Pipeline` directory: two CLIP text encoders with projection (32 wide each; pooled 32 +
    32 = the transformer's pooled_projection_dim 64), a T5 encoder 80 wide (`joint_attention_dim`), a one-layer
    SD3 transformer on 16 x 16 latents (patch 1), a VAE of two blocks (32 x 32 images: the dummy's 32 x 32
    latents with one block make four times the image tokens), a flow-matching Euler scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, t5_tokenizer = tiny_clip_tokenizer(folder.parent / f"{folder.name}-bpe"), tiny_t5_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=SD3_JOINT,
        pooled_projection_dim=64,
        out_channels=4,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_flow_vae(latent_channels=4, blocks=2),
        text_encoder=_tiny_clip_text(tokenizer, projection=True, seed=1),
        tokenizer=tokenizer,
        text_encoder_2=_tiny_clip_text(tokenizer, projection=True, seed=2),
        tokenizer_2=tokenizer,
        text_encoder_3=_tiny_t5(t5_tokenizer, SD3_JOINT),
        tokenizer_3=t5_tokenizer,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_flux(folder: Path) -> Path:
    """A `FluxPipeline` directory of diffusers' dummy sizes: a CLIP text encoder (its 32-wide pooled output is
    the pooled embedding), a T5 encoder 32 wide (the joint tokens), a FLUX transformer of one double and one
    single block (FLUX.1-schnell-like: no guidance embedding) on packed latents of one channel (2 x 2 patches:
    in_channels 4), a one-block VAE, a flow-matching Euler scheduler. FluxPipeline samples 128 x 128 images."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, t5_tokenizer = tiny_clip_tokenizer(folder.parent / f"{folder.name}-bpe"), tiny_t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_flow_vae(latent_channels=1, blocks=1),
        text_encoder=_tiny_clip_text(tokenizer, projection=False, seed=1),
        tokenizer=tokenizer,
        text_encoder_2=_tiny_t5(t5_tokenizer, 32),
        tokenizer_2=t5_tokenizer,
    )
    pipe.save_pretrained(folder)
    return folder
