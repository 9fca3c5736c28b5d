"""Tiny pipelines built from config (SD1.5-format, SD2-style v-prediction, SDXL), the CLIP BPE tokenizer they
read (written here, no hub), and deltas on them, for registry tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from unlearning.delta import compute_delta, save_delta

# continual-uce's `relocation_away_screen` screens its away-hold by the parent's judged images; the tiny random
# pipelines here have no judge, so a test that runs the method on one says the screen is off, whatever the
# default (run_unlearning refuses the screen without a judge) and keeps the rest of the default
UNJUDGED = {"relocation_away_screen": 0.0}
# continual-uce with every hardening off — UCE's closed form over the lineage — for a test of one mechanism
PLAIN_CLOSED_FORM = {
    "adversarial_rounds": 0,
    "adversarial_words_only": 0.0,
    "relocation_rounds": 0,
    "relocation_push_only": 0.0,
    "relocation_current_only": 0.0,
    "relocation_away_threshold": 0.0,
    "relocation_away_screen": 0.0,
    "relocation_variants": 0,
}


def byte_alphabet() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode table (Radford et al. 2019): 256 printable stand-ins for the bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + k) for k in range(len(others))]


# Whole words of the tiny vocabulary (one token each): the concepts the tests name and enough everyday words
# for what reads the vocabulary (the sweep's and the broad Gram's halves, unlearning/prompts.py).
WORDS = (
    "cat dog car animal bird tree house boat horse flower apple river cloud stone lamp book road mountain "
    "table bread ocean field garden bottle"
).split()


def _word_merges(word: str) -> list[str]:
    """Left-to-right BPE merges that make `word` (at a word's end) one token: "c a", "ca t</w>"."""
    pieces, merges = list(word[:-1]) + [word[-1] + "</w>"], []
    joined = pieces[0]
    for piece in pieces[1:]:
        merges.append(f"{joined} {piece}")
        joined += piece
    return merges


def write_clip_tokenizer(folder) -> int:
    """A CLIP BPE vocabulary of single bytes (each also as a word end, "x</w>"), a few merges for the test's
    words ("cherry" in pieces; `WORDS` whole), and the two special tokens; returns the vocabulary size."""
    symbols = byte_alphabet()
    merges = ["c h", "ch e", "r r", "che rr", "s k", "sk y</w>"]
    merges += [m for word in WORDS for m in _word_merges(word) if m not in merges]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


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


def tiny_clip_tokenizer(folder: Path):
    """The CLIP tokenizer `write_clip_tokenizer` writes into `folder`, at CLIP's 77 tokens."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _tiny_clip_text(tokenizer, *, projection: bool, seed: int):
    """A CLIP text encoder of diffusers' dummy size (hidden 32, 5 layers); with `projection`, the
    `CLIPTextModelWithProjection` SDXL's second encoder is (its pooled `text_embeds` of width 32)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    eos, bos = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|startoftext|>"])
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
        projection_dim=32,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _tiny_vae(sample_size: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=sample_size * 2,
    )


def _tiny_unet_sizes(sample_size: int) -> dict:
    """diffusers' dummy UNet sizes with linear projections (as SD2.x and SDXL have), the SD2 and SDXL
    builders' common part."""
    return dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )


def build_tiny_sd2(folder: Path, *, sample_size: int = 16) -> Path:
    """An SD2.x-style `StableDiffusionPipeline` directory: one CLIP text encoder, a linear-projection UNet
    (diffusers' dummy sizes), and a v-prediction scheduler, as SD 2.1 ships."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(folder.parent / f"{folder.name}-bpe")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_tiny_unet_sizes(sample_size), cross_attention_dim=32)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(sample_size),
        text_encoder=_tiny_clip_text(tokenizer, projection=False, seed=1),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_sdxl(folder: Path, *, sample_size: int = 16) -> Path:
    """A `StableDiffusionXLPipeline` directory of diffusers' dummy sizes: two CLIP text encoders (the
    second with projection), a UNet that attends to both encoders' hidden states concatenated (32 + 32 = 64)
    and adds the pooled embedding and six time ids (`text_time`: 6 x 8 + 32 = 80)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(folder.parent / f"{folder.name}-bpe")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **_tiny_unet_sizes(sample_size),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(sample_size),
        text_encoder=_tiny_clip_text(tokenizer, projection=False, seed=1),
        text_encoder_2=_tiny_clip_text(tokenizer, projection=True, seed=2),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
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


def step_context(student, parent, **fields):
    """A loss method's StepContext for a batch of one 1×2×2 latent z = 0; every field a test does not
    name is None (toy student and parent modules: `forward(z, t, c)` returning an object with `.sample`)."""
    from unlearning.methods.context import StepContext

    z = torch.zeros(1, 1, 2, 2)
    defaults = dict(
        student=student,
        parent=parent,
        student_maps=None,
        parent_maps=None,
        forget_noisy=z,
        forget_noise=z,
        forget_timesteps=torch.zeros(1),
        target_embeds=None,
        anchor_embeds=None,
        empty_embeds=None,
        target_tokens=None,
        anchor_tokens=None,
        preserve_noisy=z,
        preserve_noise=z,
        preserve_timesteps=torch.zeros(1),
        preserve_embeds=None,
        trained={},
        base_values={},
        hyper={},
    )
    return StepContext(**{**defaults, **fields})


def uce_edited_copy(pipe, sources: list[str], targets: list[str]):
    """A copy of `pipe` whose attn2 K/V map every token of each `sources` prompt onto the same position of
    the `targets` prompt (a UCE closed form with no preserve term): a candidate built to erase or relocate."""
    import copy

    from unlearning.methods.uce import closed_form

    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder

    def encode(prompts):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            return encoder(ids.input_ids)[0].reshape(-1, encoder.config.hidden_size)

    keys, anchors = encode(sources), encode(targets)
    edited = copy.deepcopy(pipe)
    with torch.no_grad():
        for name, weight in edited.unet.named_parameters():
            if name.endswith((".attn2.to_k.weight", ".attn2.to_v.weight")):
                weight.copy_(
                    closed_form(
                        weight, keys, anchors, keys[:0], erase_scale=1.0, preserve_scale=0.0, lambda_identity=0.01
                    )
                )
    return edited
