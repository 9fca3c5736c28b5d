"""The shapes world's two judges as `Judge`s (unlearning/evaluation/checks.py): uint8 images in,
class probabilities and features out. The detector (detector.py) is the first judge and its features
are the perceptual space for retention and FID; the second detector (second_detector.py) is the
independent second opinion whose agreement every evaluation reports."""

from __future__ import annotations

import numpy as np
import torch

from unlearning.shapes.detector import HEADS, classify, to_model_input


class ShapesJudge:
    heads = HEADS

    def __init__(self, detector: torch.nn.Module, name: str = "detector"):
        self.detector = detector.eval()
        self.name = name

    def probabilities(self, images: np.ndarray) -> dict[str, np.ndarray]:
        probs = classify(self.detector, to_model_input(torch.from_numpy(images)))
        return {head: p.numpy() for head, p in probs.items()}

    @torch.no_grad()
    def feature_maps(self, images: np.ndarray) -> list[torch.Tensor]:
        return self.detector.stage_features(to_model_input(torch.from_numpy(images)))

    @torch.no_grad()
    def embeddings(self, images: np.ndarray) -> np.ndarray:
        return self.detector.embed(to_model_input(torch.from_numpy(images))).numpy().astype(np.float64)


def shapes_judges(weights_dir=None) -> tuple[ShapesJudge, ShapesJudge]:
    """(first judge, second judge) from the shipped weights.

    Raises:
        FileNotFoundError: a judge was never trained.
    """
    from unlearning.shapes.train import load_detector, load_second_detector

    return ShapesJudge(load_detector(weights_dir), "detector"), ShapesJudge(
        load_second_detector(weights_dir), "second-detector"
    )
