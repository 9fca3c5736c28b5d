"""The shapes-world detector: a small CNN with object, style and colour heads.

It is the judge of every unlearning claim on the shapes world (forget accuracy, in- and cross-domain
retain accuracy) and its features are the perceptual space for retention and FID there. Generated
images are blurrier, noisier and more tinted than clean renders, so it is trained on renders degraded
that way (`degrade`), and measured on both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unlearning.shapes.vocabulary import COLOUR_NAMES, OBJECTS, STYLES

HEADS: dict[str, tuple[str, ...]] = {"object": OBJECTS, "style": STYLES, "colour": COLOUR_NAMES}


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ShapesDetector(nn.Module):
    """Input: images in [-1, 1], (N, 3, 32, 32). Output: logits per head."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.stages = nn.ModuleList([_block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width)])
        self.feature_dim = 4 * width
        self.heads = nn.ModuleDict({name: nn.Linear(self.feature_dim, len(classes)) for name, classes in HEADS.items()})

    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each stage (32x32, 16x16, 8x8): the layers of an LPIPS-style distance."""
        features, x = [], images
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            features.append(x)
        return features

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Global feature vector (the space for FID/KID on the shapes world)."""
        return self.stage_features(images)[-1].mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.embed(images)
        return {name: head(pooled) for name, head in self.heads.items()}


def to_model_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1] (the VAE's and the detector's range)."""
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma in pixels, 0 = none) with a 5x5 kernel."""
    offsets = torch.arange(-2, 3, dtype=images.dtype, device=images.device)
    sigma = sigma.clamp_min(1e-3)[:, None]
    kernel_1d = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma**2))
    kernel_1d = kernel_1d / kernel_1d.sum(dim=1, keepdim=True)
    n, c, h, w = images.shape
    x = images.reshape(1, n * c, h, w)
    k_row = kernel_1d.repeat_interleave(c, dim=0)[:, None, None, :]
    k_col = kernel_1d.repeat_interleave(c, dim=0)[:, None, :, None]
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k_row, groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k_col, groups=n * c)
    return x.reshape(n, c, h, w)


def degrade(images: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Degrade images (in [-1, 1]) the way generated ones are: blur, noise, colour jitter, softness.

    Each image gets its own random amount, up to `strength` times the maxima below. Background tint
    is applied by the renderer (it needs the mask), see `render(..., background_tint=...)`.
    """
    n = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand((n, *shape), generator=generator)

    x = (images + 1.0) / 2.0
    # brightness, contrast and saturation jitter; hue is left alone (it names the colour)
    x = x * uniform(1 - 0.15 * strength, 1 + 0.15 * strength, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(1 - 0.25 * strength, 1 + 0.2 * strength, 1, 1, 1) + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * uniform(1 - 0.3 * strength, 1 + 0.2 * strength, 1, 1, 1) + grey
    x = _gaussian_blur(x, uniform(0.0, 0.9 * strength))
    # softness: some images down- and up-sampled, like a decoder's smoothing
    soft = torch.rand(n, generator=generator) < 0.25 * strength
    if soft.any():
        small = F.interpolate(x[soft], scale_factor=0.5, mode="bilinear", align_corners=False)
        x[soft] = F.interpolate(small, scale_factor=2.0, mode="bilinear", align_corners=False)
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, 0.07 * strength, 1, 1, 1)
    return x.clamp(0.0, 1.0) * 2.0 - 1.0


@torch.no_grad()
def classify(detector: ShapesDetector, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Class probabilities per head for images in [-1, 1]."""
    detector.eval()
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in HEADS}
    for start in range(0, images.shape[0], batch_size):
        logits = detector(images[start : start + batch_size])
        for name in HEADS:
            chunks[name].append(logits[name].softmax(dim=-1))
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def cosine_lr(step: int, total: int, base_lr: float, warmup: int = 100, floor: float = 0.1) -> float:
    """Linear warm-up then cosine decay to floor * base_lr (used by every world-training stage)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
