"""The models bench/gpu_real.py measures: SD1.5- and SDXL-size pipelines built from config (random weights,
real shapes), and their tiny counterparts for a run on the CPU (bench/gpu_real.py's docstring says what each
row measures on them). bench/gpu_real.py imports it by name (a bench script's folder comes first on sys.path).
"""

from __future__ import annotations

import gpu_step  # bench/gpu_step.py: its DUGE step, FLOP count and step timing
import torch

# SD's VAE (SD1.5 and SDXL share the shape): four blocks, 8× down.
VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
)
TINY_VAE = dict(VAE, block_out_channels=(32, 32, 32, 32), layers_per_block=1)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32)
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)

MODELS = {
    "sd15": dict(
        unet=gpu_step.SIZES["sd15"]["unet"],
        text=(CLIP_L,),
        vae=VAE,
        sample_batch=16,
        duge_batch=gpu_step.SIZES["sd15"]["batch"],
    ),
    "sdxl": dict(
        unet=dict(  # diffusers' StableDiffusionXLPipeline UNet config (2.57B parameters)
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
        text=(CLIP_L, dict(BIG_G, projection_dim=1280)),
        vae=VAE,
        sample_batch=4,
        duge_batch=4,
    ),
}
TINY = {
    "sd15": dict(unet=gpu_step.SIZES["tiny"]["unet"], text=(TINY_TEXT,), vae=TINY_VAE, sample_batch=2, duge_batch=2),
    "sdxl": dict(
        unet=dict(  # tests/tiny_models.py's SDXL UNet: 32 + 32 wide attn2, 6 × 8 time ids + 32 pooled
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,
        ),
        text=(TINY_TEXT, dict(TINY_TEXT, projection_dim=32)),
        vae=TINY_VAE,
        sample_batch=2,
        duge_batch=2,
    ),
}


def build_pipeline(spec: dict, device: torch.device):
    """A diffusers pipeline of `spec`'s shapes with random weights (fp32), built on `device`."""
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from unlearning.shapes.model import sampling_scheduler, text_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(text_encoder_path(), model_max_length=77, local_files_only=True)
    torch.manual_seed(0)
    with torch.device(device):  # initialise in place: an SDXL-size model is slow to initialise on the CPU
        encoders = []
        for text in spec["text"]:
            config = CLIPTextConfig(
                **text,
                vocab_size=tokenizer.vocab_size,
                max_position_embeddings=77,
                bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id,  # the pooled position: WordPiece ends a prompt with [SEP]
                pad_token_id=tokenizer.pad_token_id,
            )
            model = CLIPTextModelWithProjection if "projection_dim" in text else CLIPTextModel
            encoders.append(model(config).eval())
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"], sample_size=spec["unet"]["sample_size"] * 8)
    parts = dict(vae=vae, text_encoder=encoders[0], tokenizer=tokenizer, unet=unet, scheduler=sampling_scheduler())
    if len(encoders) == 2:
        return StableDiffusionXLPipeline(**parts, text_encoder_2=encoders[1], tokenizer_2=tokenizer)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
