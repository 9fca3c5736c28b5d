"""Loading a text-to-image pipeline and sampling from it reproducibly.

Every image gets its own seeded generator, so image k of prompt p is the same whatever the batch it
is generated in: base and candidate models then see the same initial noise for the same (prompt, seed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from unlearning.conditioning import FLUX, MMDIT, Condition, architecture, encode, pipeline_kwargs
from unlearning.model_folder import is_model_folder
from unlearning.shapes.shipped import SHAPES_BASE_MODEL

MAX_PROMPT_CHARS = 1000


class PromptError(ValueError):
    """A prompt the model cannot take: empty, or longer than its tokenizer's limit."""


def load_model(
    model: str | Path | None = None, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> DiffusionPipeline:
    """Load a base pipeline: the shapes base (None or "shapes") or a local diffusers directory, as the class
    its `model_index.json` names (`StableDiffusionPipeline` for SD1.x/2.x, `StableDiffusionXLPipeline` for
    SDXL, `StableDiffusion3Pipeline`, `FluxPipeline`: diffusers' `DiffusionPipeline.from_pretrained` reads
    `_class_name`), so that sampling conditions the denoiser as the architecture does. A model folder (base
    plus deltas) is registry/loading.py `load_parent`'s, the one loader that verifies it.

    Raises:
        FileNotFoundError: `model` is neither "shapes" nor an existing diffusers directory.
    """
    if model is None or str(model) == SHAPES_BASE_MODEL:
        from unlearning.shapes.model import load_shapes_pipeline

        return load_shapes_pipeline(device=device, dtype=dtype)
    path = Path(model)
    if is_model_folder(path):
        raise FileNotFoundError(
            f"{model}: an `lethe unlearn --out` folder, not a base model: load it with "
            "registry.loading.load_parent (which checks its base's sha256), as every lethe command does"
        )
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{model}: not a diffusers directory (no model_index.json), not an `lethe unlearn --out` folder, "
            "and not 'shapes'"
        )
    pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def model_identity(model: str | Path | None) -> tuple[str, str]:
    """(id, sha256) of a base model: "shapes" hashes the shipped weights, a directory its files.

    The sha256 keys caches and is recorded in every manifest, so a delta is never applied to a base
    other than the one it was trained against.
    """
    from unlearning.shapes.shipped import WEIGHTS_DIR, weights_sha256

    if model is None or str(model) == SHAPES_BASE_MODEL:
        return SHAPES_BASE_MODEL, weights_sha256(WEIGHTS_DIR)
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"{model}: not a diffusers directory and not 'shapes'")
    return str(path.resolve()), weights_sha256(path)


SCHEDULERS = ("ddim", "dpm++", "euler", "pndm")


def flow_matching(pipe: DiffusionPipeline) -> bool:
    """Whether the pipeline samples by flow matching (SD3, FLUX: a `FlowMatch…Scheduler`), not by a DDPM schedule."""
    return type(pipe.scheduler).__name__.startswith("FlowMatch")


def default_scheduler(pipe: DiffusionPipeline) -> str:
    """The sampler `lethe evaluate` uses unless told: DDIM on a DDPM schedule, a flow-matching model's own Euler."""
    return "euler" if flow_matching(pipe) else "ddim"


def use_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Swap the sampler, keeping the model's noise schedule. A flow-matching pipeline (SD3, FLUX) keeps its own
    `FlowMatchEulerDiscreteScheduler`, which is `euler`; the DDPM samplers do not apply to it.

    Raises:
        ValueError: unknown scheduler name.
        ConfigError: a sampler other than `euler` for a flow-matching pipeline.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

    classes = {
        "ddim": DDIMScheduler,
        "dpm++": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
        "pndm": PNDMScheduler,
    }
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    if flow_matching(pipe):
        if name != "euler":
            from unlearning.config import ConfigError

            raise ConfigError(
                f"{type(pipe).__name__} samples by flow matching ({type(pipe.scheduler).__name__}): "
                f"scheduler euler only, not {name}"
            )
        return
    if not isinstance(pipe.scheduler, classes[name]):
        pipe.scheduler = classes[name].from_config(pipe.scheduler.config)


def check_prompt(tokenizer, prompt: str) -> None:
    """Refuse, rather than truncate, prompts the text encoder cannot see whole.

    Raises:
        PromptError: the prompt is empty or blank, or needs more tokens than `model_max_length`.
    """
    if not prompt or not prompt.strip():
        raise PromptError("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
    needed = len(tokenizer(prompt, truncation=False).input_ids)
    if needed > tokenizer.model_max_length:
        raise PromptError(
            f"the prompt needs {needed} tokens; this model's tokenizer takes at most {tokenizer.model_max_length}"
        )


@torch.no_grad()
def generate(
    pipe: DiffusionPipeline,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int = 25,
    guidance_scale: float = 5.0,
    batch_size: int = 64,
) -> np.ndarray:
    """Generate one image per (prompt, seed) pair; returns (N, H, W, 3) uint8.

    Each distinct prompt is encoded once (`encode`, which equals the pipeline's own `encode_prompt`): the
    evaluation draws one prompt on many seeds, and with a small denoiser the text encoder was most of the
    time. The images are `generate_from_condition`'s. An MMDiT pipeline (SD3, FLUX) samples through its own
    call (`_generate_mmdit`).
    """
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    if getattr(pipe, "unet", None) is None:  # an MMDiT (SD3, FLUX): flow matching, FLUX's latents packed
        return _generate_mmdit(pipe, prompts, seeds, steps=steps, guidance_scale=guidance_scale, batch_size=batch_size)
    distinct = list(dict.fromkeys(prompts))
    row = {prompt: i for i, prompt in enumerate(distinct)}
    condition = encode(pipe, distinct)[[row[prompt] for prompt in prompts]]
    return generate_from_condition(
        pipe, condition, seeds, steps=steps, guidance_scale=guidance_scale, batch_size=batch_size
    )


@torch.no_grad()
def generate_from_condition(
    pipe: DiffusionPipeline,
    condition: Condition,
    seeds: list[int],
    *,
    steps: int = 25,
    guidance_scale: float = 5.0,
    batch_size: int = 64,
) -> np.ndarray:
    """One image per row of a pipeline's `condition` (unlearning/conditioning.py `Condition`: a prompt's,
    or embeddings no prompt spells) and seed; (N, H, W, 3) uint8.

    Classifier-free guidance runs conditional and unconditional halves in one UNet batch (diffusers
    does this) against the empty prompt, as the pipeline builds it for no negative prompt (SDXL with
    `force_zeros_for_empty_prompt`: zeros); each image uses `torch.Generator().manual_seed(seed)` on the CPU
    so results do not depend on the device's RNG or on batching. An MMDiT (SD3, FLUX) samples through its own
    call with the condition as its `prompt_embeds` and `pooled_prompt_embeds` (`_generate_mmdit`): for a
    prompt's condition (`encode`), the images `generate` draws for the prompt.
    """
    if len(condition) != len(seeds):
        raise ValueError("one seed per condition row")
    if architecture(pipe) in MMDIT:  # its own call, the condition given in place of the text
        return _generate_mmdit(
            pipe, condition, seeds, steps=steps, guidance_scale=guidance_scale, batch_size=batch_size
        )
    condition = Condition(
        condition.hidden.float(),
        None if condition.pooled is None else condition.pooled.float(),
        condition.time_ids,
    )
    images = []
    for start in range(0, len(seeds), batch_size):
        chunk = condition[start : start + batch_size]
        latents = initial_noise(pipe, seeds[start : start + batch_size])
        out = pipe(
            **guided_kwargs(pipe, chunk),
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            latents=latents,
            output_type="np",
        )
        images.append(_uint8(out.images))
    return np.concatenate(images)


def initial_noise(pipe: DiffusionPipeline, seeds: list[int]) -> torch.Tensor:
    """A UNet pipeline's initial latents, one per seed, each drawn by its own CPU generator (so an image does
    not depend on its batch or the device's RNG), on the pipeline's device and dtype."""
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    return noise.to(device=pipe.device, dtype=pipe.unet.dtype)


def guided_kwargs(pipe: DiffusionPipeline, condition: Condition) -> dict:
    """A UNet pipeline's `prompt_embeds` keyword arguments for `condition`, with the negative the pipeline
    builds for no negative prompt: the empty prompt's condition (SDXL with `force_zeros_for_empty_prompt`:
    zeros), one row per row of `condition`."""
    negative = encode(pipe, [""])
    if condition.pooled is not None and pipe.config.get("force_zeros_for_empty_prompt", False):
        negative = Condition(torch.zeros_like(negative.hidden), torch.zeros_like(negative.pooled), negative.time_ids)
    return pipeline_kwargs(condition, negative.repeat(len(condition)))


def _uint8(images: np.ndarray) -> np.ndarray:
    """A pipeline's float images in [0, 1] (`output_type="np"`) as uint8, rounded."""
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _generate_mmdit(
    pipe, prompts: list[str] | Condition, seeds, *, steps: int, guidance_scale: float, batch_size: int
) -> np.ndarray:
    """`generate` for an MMDiT pipeline (SD3, FLUX), through its own `__call__` at its default size: its flow-
    matching scheduler, its encoding of the prompts (or a given condition: `_mmdit_call`), its latent layout
    (FLUX packs 2x2 patches). Image k's initial noise is drawn by its own generator, seeded with seeds[k]
    (diffusers' `randn_tensor` draws a list of generators one row each), so it does not depend on the batch.
    SD3 applies `guidance_scale` as classifier-free guidance; FLUX as its guidance embedding where the
    transformer has one (FLUX.1-dev; FLUX.1-schnell ignores it)."""
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        out = _mmdit_call(pipe, prompts[chunk], seeds[chunk], steps=steps, guidance_scale=guidance_scale, output="np")
        images.append(_uint8(out))
    return np.concatenate(images)


def _mmdit_call(pipe, prompts: list[str] | Condition, seeds, *, steps: int, guidance_scale: float, output: str):
    """The MMDiT pipeline's own call on `prompts`, one seeded CPU generator per image (`_generate_mmdit`). A
    `Condition` (one row per image) is given as the call's `prompt_embeds` (the joint tokens) and
    `pooled_prompt_embeds`, which both pipelines take in place of a prompt; the negative is the one the
    pipeline builds itself for no negative prompt (SD3's classifier-free guidance: the empty prompt's; FLUX none),
    so a prompt's own condition draws the images the prompt does."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    if isinstance(prompts, Condition):
        dtype = pipe.transformer.dtype  # a Condition is float32; a half-precision transformer reads its own dtype
        text = {"prompt_embeds": prompts.hidden.to(dtype), "pooled_prompt_embeds": prompts.pooled.to(dtype)}
    else:
        text = {"prompt": prompts}
    return pipe(
        **text, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators, output_type=output
    ).images


@torch.no_grad()
def mmdit_latents(pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance_scale: float) -> torch.Tensor:
    """The latents an MMDiT pipeline's `generate` images are decoded from (the same call and seeds, stopped
    before the VAE: `output_type="latent"`): what its transformer denoises — SD3's (B, C, h, w) and FLUX's
    packed (B, h/2 · w/2, 4C), both in the VAE's scaled and shifted space. `decode_latents` makes them images."""
    return _mmdit_call(pipe, prompts, seeds, steps=steps, guidance_scale=guidance_scale, output="latent")


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> np.ndarray:
    """A pipeline's latents (`output_type="latent"`) as (N, H, W, 3) uint8 images, decoded as its own call
    decodes them: FLUX's packed latents unpacked at its default size (`FluxPipeline._unpack_latents`), then
    z / scaling_factor + shift_factor (SD3's and FLUX's VAEs have a shift; SD1.x/2.x/SDXL's none) through the
    VAE, and [-1, 1] mapped to [0, 1] as diffusers' `VaeImageProcessor.denormalize` does, then to uint8 as
    `generate` does (`_uint8`): on an MMDiT in float32, `generate`'s images bit for bit
    (tests/test_mmdit_pipelines.py)."""
    if architecture(pipe) == FLUX:
        size = pipe.default_sample_size * pipe.vae_scale_factor
        latents = pipe._unpack_latents(latents, size, size, pipe.vae_scale_factor)
    config = pipe.vae.config
    latents = latents / config.scaling_factor + (config.get("shift_factor") or 0.0)
    decoded = pipe.vae.decode(latents.to(pipe.vae.dtype)).sample
    return _uint8((decoded * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy())


def image_grid(images: np.ndarray, columns: int) -> Image.Image:
    """Tile (N, H, W, 3) uint8 images into one picture, row-major, with a 2-pixel white gutter."""
    n, h, w, _ = images.shape
    rows = (n + columns - 1) // columns
    gutter = 2
    canvas = np.full((rows * (h + gutter) + gutter, columns * (w + gutter) + gutter, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        y, x = gutter + r * (h + gutter), gutter + c * (w + gutter)
        canvas[y : y + h, x : x + w] = image
    return Image.fromarray(canvas)


def upscale(picture: Image.Image, factor: int) -> Image.Image:
    """Nearest-neighbour enlargement: 32 px images are too small to look at unscaled."""
    return picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
