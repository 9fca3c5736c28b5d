"""Tiny SD1.5-format pipelines built from config, and deltas on them, for registry tests."""

from __future__ import annotations

from pathlib import Path

import torch

from unlearning.delta import compute_delta, save_delta


def tiny_unet(cross_attention_dim: int = 16):
    """A seeded SD1.5-shaped UNet of two blocks (one with cross-attention) on 8x8 latents."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_tiny_base(folder: Path) -> Path:
    """A StableDiffusionPipeline directory: tiny UNet/VAE, the real frozen MiniLM text encoder."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from unlearning.shapes.model import load_text_encoder, sampling_scheduler

    unet = tiny_unet(cross_attention_dim=384)
    vae = AutoencoderKL(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=32,
        mid_block_add_attention=False,
    )
    encoder, tokenizer = load_text_encoder()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def shapes_prompts_for(cfg):
    """The request prompts the shapes world builds for a config (what the pipeline hands the loop)."""
    from unlearning.shapes.world import ShapesWorld

    return ShapesWorld().request_prompts(cfg)


def kv_names(unet) -> list[str]:
    return [n for n, _ in unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n]


def make_delta(unet, path: Path, *, seed: int, scale: float = 0.05, base_state=None) -> dict:
    """Perturb attn2 K/V of `unet` in place (a stand-in for one unlearning step) and save the delta
    against `base_state` (the base model's tensors). Returns the delta."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for name in kv_names(unet):
            params[name].add_(torch.randn(params[name].shape, generator=generator) * scale)
    trained = {name: params[name].detach().clone() for name in kv_names(unet)}
    delta = compute_delta(trained, base_state)
    save_delta(path, delta, {"method": "test-perturbation", "params": "xattn-kv"})
    return delta


def kill_after_checkpoint(monkeypatch, run, *, saves: int = 1, check_state=None) -> None:
    """Call `run()` and stop it as a kill would, right after the loop has written its `saves`-th
    checkpoint (a KeyboardInterrupt once the file is on disk); `check_state(state)` sees every saved state."""
    import pytest

    from unlearning import loop

    real_save = loop._save_checkpoint
    written = []

    def save_then_die(path, state):
        real_save(path, state)
        if check_state is not None:
            check_state(state)
        written.append(state["step"])
        if len(written) == saves:
            raise KeyboardInterrupt(f"killed after the checkpoint at step {state['step']}")

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(loop, "_save_checkpoint", save_then_die)
        run()


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    """Bit-identical state dicts (a resumed run must end exactly where an uninterrupted one does)."""
    actual_state = actual.state_dict()
    for key, value in expected.state_dict().items():
        assert torch.equal(actual_state[key], value), key
