"""The shapes world's second judge: an independently trained classifier of another architecture.

One judge can be fooled: an unlearned model that draws something the detector misreads would pass
every forget bar. So every evaluation also asks this one and reports how often the two agree; the
gate fails when they disagree on too many forget images (unlearning/evaluation/gates.py).

Independent of `ShapesDetector` (detector.py) in everything that could correlate their mistakes:
- architecture: a residual network with strided downsampling, GroupNorm, GELU and mean+max pooling
  (the detector is a VGG-style stack with BatchNorm, ReLU, max-pool and mean pooling);
- augmentations (`augment`): random translation, horizontal flip, cut-out, box blur, grain and
  per-channel gain (the detector sees Gaussian blur, down/up-sampling, noise and colour jitter);
- its own seed and its own stream of training renders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unlearning.shapes.detector import HEADS


class _Residual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm1 = nn.GroupNorm(8, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(self.norm2(self.conv2(h)) + self.skip(x))


class ResidualDetector(nn.Module):
    """Input: images in [-1, 1], (N, 3, 32, 32). Output: logits per head (the heads of `HEADS`)."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(8, width), nn.GELU())
        self.stages = nn.Sequential(
            _Residual(width, width, 1),
            _Residual(width, 2 * width, 2),  # 16x16
            _Residual(2 * width, 2 * width, 1),
            _Residual(2 * width, 4 * width, 2),  # 8x8
            _Residual(4 * width, 4 * width, 1),
        )
        self.feature_dim = 8 * width  # mean and max pooled
        self.heads = nn.ModuleDict({name: nn.Linear(self.feature_dim, len(classes)) for name, classes in HEADS.items()})

    def stage_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after the stem and each residual stage (32x32, 16x16, 8x8)."""
        features, x = [], self.stem(images)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(images))
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.embed(images)
        return {name: head(pooled) for name, head in self.heads.items()}


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """This judge's augmentations of images in [-1, 1], each image its own random amount."""
    n = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand((n, *shape), generator=generator)

    # translation by up to 3 pixels (edge pixels repeated), and a horizontal flip for half
    shifts = torch.randint(-3, 4, (n, 2), generator=generator)
    padded = F.pad(images, (3, 3, 3, 3), mode="replicate")
    x = torch.stack(
        [padded[i, :, 3 + int(dy) : 35 + int(dy), 3 + int(dx) : 35 + int(dx)] for i, (dy, dx) in enumerate(shifts)]
    )
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(dims=(3,)), x)
    # a 3x3 box blur for a third, mixed in by a random amount
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    amount = uniform(0.0, 1.0, 1, 1, 1) * (torch.rand(n, 1, 1, 1, generator=generator) < 0.33)
    x = x + amount * (blurred - x)
    # per-channel gain (a white-balance shift that keeps the hue's name) and grain
    x = (x + 1.0) * uniform(0.9, 1.1, 3, 1, 1) - 1.0
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, 0.1, 1, 1, 1)
    # cut-out: a 5x5 patch set to the image's mean colour in a fifth of the images
    cut = torch.rand(n, generator=generator) < 0.2
    corners = torch.randint(0, 28, (n, 2), generator=generator)
    for i in cut.nonzero().flatten().tolist():
        y0, x0 = (int(v) for v in corners[i])
        x[i, :, y0 : y0 + 5, x0 : x0 + 5] = x[i].mean(dim=(1, 2), keepdim=True)
    return x.clamp(-1.0, 1.0)
