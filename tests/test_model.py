"""The shipped base model: loads offline, generates reproducibly, exports to plain diffusers."""

import json

import numpy as np
import pytest
import torch

from unlearning.sampling import generate
from unlearning.shapes import model as shapes_model


def test_committed_weights_are_small_enough_to_ship():
    files = [p for p in shapes_model.WEIGHTS_DIR.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total <= 40 * 1024 * 1024, f"{total / 1e6:.1f} MB"
    assert (shapes_model.WEIGHTS_DIR / "world.json").is_file(), "weights must say how they were made"


def test_base_model_loads_offline_in_sd15_format(shapes_pipe):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    assert isinstance(shapes_pipe, StableDiffusionPipeline)
    assert isinstance(shapes_pipe.unet, UNet2DConditionModel) and isinstance(shapes_pipe.vae, AutoencoderKL)
    assert shapes_pipe.unet.config.cross_attention_dim == shapes_model.TEXT_EMBED_DIM
    assert any(name.endswith("attn2") for name, _ in shapes_pipe.unet.named_modules())
    assert shapes_pipe.unet.dtype == torch.float32


def test_generation_is_reproducible_per_seed_and_batch_independent(shapes_pipe):
    prompts = ["a red solid circle", "a blue striped star", "a green dotted heart"]
    images = generate(shapes_pipe, prompts, [1, 2, 3], steps=8)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    alone = generate(shapes_pipe, prompts[1:2], [2], steps=8)
    assert np.abs(images[1].astype(int) - alone[0].astype(int)).max() <= 1
    assert images[0].std() > 5, "a generated image should not be flat"


def test_text_encoder_is_the_pretrained_minilm_and_frozen(shapes_pipe):
    encoder = shapes_pipe.text_encoder
    assert type(encoder).__name__ == "BertModel"
    assert not any(p.requires_grad for p in encoder.parameters())
    embed = shapes_model.encode_prompts(encoder, shapes_pipe.tokenizer, ["a red circle", "a red disc", "a blue square"])
    pooled = torch.nn.functional.normalize(embed.mean(dim=1), dim=-1)
    # pretrained: paraphrases sit closer than different scenes do
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2]


@pytest.mark.slow
def test_exported_directory_loads_with_plain_diffusers(shapes_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = shapes_model.export_diffusers(shapes_pipe, tmp_path / "shapes-sd")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    reloaded = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    a = generate(shapes_pipe, ["a yellow checkered square"], [5], steps=6)
    b = generate(reloaded, ["a yellow checkered square"], [5], steps=6)
    assert np.array_equal(a, b)


def test_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="lethe world train"):
        shapes_model.load_shapes_pipeline(tmp_path)
