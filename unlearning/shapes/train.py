"""`lethe world train`: retrain the shapes world's two judges, VAE and UNet, seeded and resumable.

Four stages, in order, each writing its weights into the weights directory when it finishes:

1. detector — the judge, trained on fresh renders, most of them degraded like generated images;
2. second_detector — the second judge (second_detector.py): another architecture, augmentations, seed;
3. vae      — a KL autoencoder (f=2) on fresh renders: L1 + MSE reconstruction, a tiny KL term, and
              the SD-style `scaling_factor` measured afterwards so latents have unit variance;
4. unet     — epsilon-prediction on VAE latents of a fixed rendered set, captions from the training
              templates (synonyms included, 10 % empty for classifier-free guidance), min-SNR-5
              loss weighting (Hang et al. 2023, eq. 7) and EMA weights, which are what ships.

Every random draw of step k comes from a generator seeded with (seed, stage, k), and a checkpoint
every `checkpoint_every` steps holds model, optimiser, EMA and step; so a killed run started again
resumes and ends where an uninterrupted run would. A stage whose weights exist is skipped.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unlearning.files import save_torch, sha256_file, write_json
from unlearning.shapes import model as shapes_model
from unlearning.shapes.detector import HEADS, ShapesDetector, cosine_lr, degrade, to_model_input
from unlearning.shapes.render import random_scenes, render_batch
from unlearning.shapes.second_detector import ResidualDetector
from unlearning.shapes.second_detector import augment as augment_second
from unlearning.shapes.vocabulary import (
    UNCONDITIONAL_RATE,
    all_scenes,
    sample_training_caption,
    training_captions,
)


@dataclass(frozen=True)
class WorldTrainConfig:
    seed: int = 0  # every stage's randomness derives from it
    detector_steps: int = 1500  # batch 128, fresh renders each step
    detector_batch: int = 128
    detector_lr: float = 2e-3
    second_detector_steps: int = 1500  # the second judge: another architecture, augmentations and seed
    second_detector_batch: int = 128
    second_detector_lr: float = 2e-3
    vae_steps: int = 2500  # batch 32, fresh renders each step
    vae_batch: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6  # as small as SD's: latents stay informative, posterior stays sane
    unet_images: int = 64_000  # fixed rendered set the UNet sees (~222 per scene)
    unet_steps: int = 20_000  # batch 64; ~0.6 s a step on 2 free cores (~3.5 h)
    unet_batch: int = 64
    unet_lr: float = 3e-4
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 250
    # A diffusers UNet folder to start from instead of a random init (fine-tuning a previous world's
    # UNet after a renderer change; it must share the VAE's latent space). Empty: from scratch.
    unet_init: str = ""


def _step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    stage_id = sum(ord(c) * 31**i for i, c in enumerate(stage)) % 100_003
    return torch.Generator().manual_seed(seed * 1_000_003 + stage_id * 10_007 + step)


# Checkpoints go through this one name (a kill right after one is what the resume tests simulate).
_save_checkpoint = save_torch


def _load_checkpoint(path: Path, cfg: WorldTrainConfig | None = None) -> dict | None:
    """The checkpoint at `path`, if any.

    Raises:
        ValueError: it was written under a different configuration (resuming would mix two runs).
    """
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=False)
    if cfg is not None and "config" in state and state["config"] != asdict(cfg):
        raise ValueError(f"{path} was written with a different configuration; remove it or use the same options")
    return state


def _degraded_renders(n: int, seed: int, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """A batch of fresh renders, half with tinted backgrounds, 70 % degraded; with their labels."""
    scenes = random_scenes(n, seed=seed * 1_000_003 + step)
    half = n // 2
    images = np.concatenate(
        [
            render_batch(scenes[:half], seed=seed * 1_000_003 + 2 * step),
            render_batch(scenes[half:], seed=seed * 1_000_003 + 2 * step + 1, background_tint=0.12),
        ]
    )
    x = to_model_input(torch.from_numpy(images))
    degraded = degrade(x, generator)
    keep_clean = torch.rand(n, generator=generator) < 0.3
    x = torch.where(keep_clean[:, None, None, None], x, degraded)
    labels = {head: torch.tensor([classes.index(getattr(s, head)) for s in scenes]) for head, classes in HEADS.items()}
    return x, labels


def _second_detector_renders(n: int, seed: int, step: int, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The second judge's own stream of renders (other seeds), a third tinted, all through its `augment`."""
    scenes = random_scenes(n, seed=seed * 1_000_033 + 500_000 + step)
    third = n // 3
    images = np.concatenate(
        [
            render_batch(scenes[:third], seed=seed * 1_000_033 + 3 * step, background_tint=0.15),
            render_batch(scenes[third:], seed=seed * 1_000_033 + 3 * step + 1),
        ]
    )
    x = augment_second(to_model_input(torch.from_numpy(images)), generator)
    labels = {head: torch.tensor([classes.index(getattr(s, head)) for s in scenes]) for head, classes in HEADS.items()}
    return x, labels


def _train_judge(stage: str, cfg: WorldTrainConfig, weights_dir: Path, work_dir: Path) -> dict:
    """Train one of the two judges (detector or second_detector) on fresh renders; write its weights."""
    builder, filename, batches, seed = JUDGES[stage]
    steps, batch, lr = getattr(cfg, f"{stage}_steps"), getattr(cfg, f"{stage}_batch"), getattr(cfg, f"{stage}_lr")
    torch.manual_seed(cfg.seed + seed)
    judge = builder()
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    ckpt_path, start = work_dir / f"{stage}.pt", 0
    if (ckpt := _load_checkpoint(ckpt_path, cfg)) is not None:
        judge.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
    judge.train()
    loss = None
    progress = tqdm(range(start, steps), desc=stage, initial=start, total=steps)
    for step in progress:
        generator = _step_generator(cfg.seed + seed, stage, step)
        images, labels = batches(batch, cfg.seed + seed, step, generator)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        logits = judge(images)
        loss = sum(F.cross_entropy(logits[h], labels[h]) for h in HEADS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0:
            _save_checkpoint(
                ckpt_path,
                {
                    "model": judge.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step + 1,
                    "config": asdict(cfg),
                },
            )
    judge.eval()
    from safetensors.torch import save_file

    weights_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, weights_dir / filename)
    return {
        "steps": steps,
        "final_loss": float(loss.item()) if loss is not None else None,
        "parameters": sum(p.numel() for p in judge.parameters()),
    }


def train_detector(cfg: WorldTrainConfig, weights_dir: Path, work_dir: Path) -> dict:
    return _train_judge("detector", cfg, weights_dir, work_dir)


def train_second_detector(cfg: WorldTrainConfig, weights_dir: Path, work_dir: Path) -> dict:
    return _train_judge("second_detector", cfg, weights_dir, work_dir)


def _load_judge(stage: str, weights_dir: Path | None) -> torch.nn.Module:
    from safetensors.torch import load_file

    builder, filename, _, _ = JUDGES[stage]
    path = (weights_dir or shapes_model.WEIGHTS_DIR) / filename
    if not path.is_file():
        raise FileNotFoundError(f"no shapes {stage.replace('_', ' ')} at {path}; run `lethe world train`")
    judge = builder()
    judge.load_state_dict(load_file(path))
    return judge.eval()


def load_detector(weights_dir: Path | None = None) -> ShapesDetector:
    """Load the committed detector, the first judge (eval mode).

    Raises:
        FileNotFoundError: it was never trained.
    """
    return _load_judge("detector", weights_dir)


def load_second_detector(weights_dir: Path | None = None) -> ResidualDetector:
    """Load the committed second judge (eval mode).

    Raises:
        FileNotFoundError: it was never trained.
    """
    return _load_judge("second_detector", weights_dir)


# stage -> (builder, weights file, batch of (images, labels) for a step, seed offset)
JUDGES = {
    "detector": (ShapesDetector, "detector.safetensors", _degraded_renders, 0),
    "second_detector": (ResidualDetector, "second_detector.safetensors", _second_detector_renders, 7_001),
}


def train_vae(cfg: WorldTrainConfig, weights_dir: Path, work_dir: Path) -> dict:
    torch.manual_seed(cfg.seed + 1)
    vae = shapes_model.build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    ckpt_path, start = work_dir / "vae.pt", 0
    if (ckpt := _load_checkpoint(ckpt_path, cfg)) is not None:
        vae.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
    vae.train()
    progress = tqdm(range(start, cfg.vae_steps), desc="vae", initial=start, total=cfg.vae_steps)
    for step in progress:
        generator = _step_generator(cfg.seed, "vae", step)
        scenes = random_scenes(cfg.vae_batch, seed=cfg.seed * 7_919 + step)
        tint = 0.12 if step % 2 else 0.0  # the decoder must also reproduce tinted backgrounds
        x = to_model_input(
            torch.from_numpy(
                render_batch(scenes, seed=cfg.seed * 100_000_000 + 10_000_000 + step, background_tint=tint)
            )
        )
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.vae_steps, cfg.vae_lr)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        rec_loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        loss = rec_loss + cfg.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        progress.set_postfix(rec=f"{rec_loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0:
            _save_checkpoint(
                ckpt_path,
                {
                    "model": vae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step + 1,
                    "config": asdict(cfg),
                },
            )
    vae.eval()
    # SD-style scaling: make the diffusion model's latents unit-variance (Rombach et al. 2022, sec. 3.1).
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(render_batch(random_scenes(2048, seed=cfg.seed + 99), seed=99)))
        latents = torch.cat([vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, 2048, 256)])
        recon = torch.cat([vae.decode(latents[i : i + 256]).sample for i in range(0, 2048, 256)])
        psnr = float(10 * torch.log10(4.0 / F.mse_loss(recon.clamp(-1, 1), x)))
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.save_pretrained(weights_dir / "vae", safe_serialization=True)
    return {"steps": cfg.vae_steps, "psnr_db": round(psnr, 2), "scaling_factor": vae.config.scaling_factor}


class _CaptionTable:
    """Every training caption embedded once (the text encoder is frozen), looked up by text."""

    def __init__(self, captions: list[str]):
        encoder, tokenizer = shapes_model.load_text_encoder()
        self.index = {c: i for i, c in enumerate(captions)}
        chunks = [
            shapes_model.encode_prompts(encoder, tokenizer, captions[i : i + 256]) for i in range(0, len(captions), 256)
        ]
        self.embeddings = torch.cat(chunks).to(torch.float16)  # halves memory; fp32 on lookup

    def lookup(self, captions: list[str]) -> torch.Tensor:
        return self.embeddings[[self.index[c] for c in captions]].float()


def _min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR_t, gamma) / SNR_t for epsilon prediction (Hang et al. 2023, "Min-SNR", eq. 7)."""
    alphas_cumprod = scheduler.alphas_cumprod[timesteps]
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return torch.clamp(snr, max=gamma) / snr


def train_unet(cfg: WorldTrainConfig, weights_dir: Path, work_dir: Path) -> dict:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(weights_dir / "vae").eval()
    scheduler = shapes_model.training_scheduler()

    # The fixed training set: renders -> latents (VAE posterior mean x scaling factor).
    scenes = random_scenes(cfg.unet_images, seed=cfg.seed + 2024)
    latents = []
    with torch.no_grad():
        for start in tqdm(range(0, cfg.unet_images, 512), desc="encode latents"):
            chunk = scenes[start : start + 512]
            rng_seed = cfg.seed * 100_000_000 + 20_000_000 + start
            tint = 0.06 if (start // 512) % 3 == 0 else 0.0
            x = to_model_input(torch.from_numpy(render_batch(chunk, seed=rng_seed, background_tint=tint)))
            latents.append(vae.encode(x).latent_dist.mean * vae.config.scaling_factor)
    latents = torch.cat(latents)
    captions = sorted({c for s in all_scenes() for c in training_captions(s)}) + [""]
    table = _CaptionTable(captions)

    torch.manual_seed(cfg.seed + 2)
    unet = shapes_model.build_unet()
    init_sha256 = None
    if cfg.unet_init:
        from diffusers import UNet2DConditionModel

        init_sha256 = sha256_file(Path(cfg.unet_init) / "diffusion_pytorch_model.safetensors")
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(cfg.unet_init).float().state_dict())
    ema = shapes_model.build_unet().requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    ckpt_path, start = work_dir / "unet.pt", 0
    if (ckpt := _load_checkpoint(ckpt_path, cfg)) is not None:
        unet.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
    unet.train()
    progress = tqdm(range(start, cfg.unet_steps), desc="unet", initial=start, total=cfg.unet_steps)
    loss_avg = None
    for step in progress:
        generator = _step_generator(cfg.seed, "unet", step)
        caption_rng = random.Random(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, cfg.unet_images, (cfg.unet_batch,), generator=generator)
        batch_captions = [
            "" if caption_rng.random() < UNCONDITIONAL_RATE else sample_training_caption(scenes[i], caption_rng)
            for i in idx.tolist()
        ]
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=generator)
        zt = scheduler.add_noise(z0, noise, t)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.unet_steps, cfg.unet_lr, warmup=200)
        pred = unet(zt, t, table.lookup(batch_captions)).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * _min_snr_weights(scheduler, t, cfg.min_snr_gamma)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - decay)
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        progress.set_postfix(loss=f"{loss_avg:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.unet_steps:
            _save_checkpoint(
                ckpt_path,
                {
                    "model": unet.state_dict(),
                    "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step + 1,
                    "config": asdict(cfg),
                },
            )
    # Ship the EMA weights in fp16 (halves the committed size; loaded back into fp32 modules).
    ema.to(torch.float16).save_pretrained(weights_dir / "unet", safe_serialization=True)
    return {
        "steps": cfg.unet_steps,
        "images": cfg.unet_images,
        "captions": len(captions),
        "loss_ema": loss_avg,
        "init": cfg.unet_init or "random",
        # which weights a fine-tune started from, whatever folder they were in
        "init_sha256": init_sha256,
    }


STAGES = ("detector", "second_detector", "vae", "unet")
# Options a stage uses beyond its own "<stage>_*" fields, seed and checkpoint_every (recorded with it).
STAGE_OPTIONS = {"unet": ("ema_decay", "min_snr_gamma")}


def _stage_done(stage: str, weights_dir: Path) -> bool:
    return {
        "detector": (weights_dir / "detector.safetensors").is_file(),
        "second_detector": (weights_dir / "second_detector.safetensors").is_file(),
        "vae": (weights_dir / "vae" / "diffusion_pytorch_model.safetensors").is_file(),
        "unet": (weights_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file(),
    }[stage]


def train_world(
    cfg: WorldTrainConfig, weights_dir: Path, work_dir: Path, stages: tuple[str, ...] = STAGES, force: bool = False
) -> dict:
    """Run the requested stages in order; finished stages are skipped unless `force`.

    Returns a summary (per stage: steps, losses, wall seconds and the stage's options), also written to
    `weights_dir/world.json`, so the committed weights say how they were made.
    """
    trainers = {
        "detector": train_detector,
        "second_detector": train_second_detector,
        "vae": train_vae,
        "unet": train_unet,
    }
    summary_path = weights_dir / "world.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    # Each stage records the options it was trained with: stages of one world may come from different runs
    # (a judge retrained later). The top-level config is the first run's, for stages recorded without theirs.
    summary.setdefault("config", asdict(cfg))
    summary["command"] = "lethe world train"
    summary.setdefault("stages", {})
    for stage in stages:
        if _stage_done(stage, weights_dir) and not force:
            continue
        if force:
            (work_dir / f"{stage}.pt").unlink(missing_ok=True)
        started = time.perf_counter()
        result = trainers[stage](cfg, weights_dir, work_dir)
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        result["threads"] = torch.get_num_threads()
        shared = ("seed", "checkpoint_every", *STAGE_OPTIONS.get(stage, ()))
        result["config"] = {k: v for k, v in asdict(cfg).items() if k.startswith(f"{stage}_") or k in shared}
        summary["stages"][stage] = result
        write_json(summary_path, summary, sort_keys=True)
    return summary
