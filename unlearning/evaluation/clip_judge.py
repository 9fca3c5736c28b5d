"""A judge for any concept: zero-shot image–text classification with a CLIP model (Radford et al. 2021,
"Learning Transferable Visual Models From Natural Language Supervision", sec. 3.1.2 and 3.1.4).

The judge is told the classes it must tell apart, per domain (its heads: "object", "style"): for a
lineage, the target, its anchor, the concepts to preserve, the concepts erased before, and a few generic
distractors. Each class name is written into every template of its domain ("a photo of a {}", ...); the
text embeddings of one class are L2-normalised, averaged over the templates and normalised again (the
prompt ensemble of sec. 3.1.4). An image's probabilities over a head are the softmax of its normalised
image embedding's cosine similarity to every class, times the model's learned temperature
`exp(logit_scale)` (sec. 2.5, the same logits CLIP was trained with).

It sits behind the same `Judge` interface as the shapes world's detectors (unlearning/evaluation/checks.py):
`probabilities` per head, `feature_maps` for the LPIPS-style retention distance (a few of the vision
tower's hidden states, patch tokens laid out on their grid), `embeddings` for FID/KID (the projected image
embeddings, L2-normalised as CLIP features are for FID: Kynkäänniemi et al. 2023, "The Role of ImageNet
Classes in Fréchet Inception Distance"). `target_scores` reports what a takedown is judged by: how often
the target is the top-1 class, and its mean probability.

The model is a transformers `CLIPModel` with its `CLIPProcessor` (tokenizer and image processor), from a
local folder or a hub id; with `HF_HUB_OFFLINE` set only files already on disk are read.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unlearning.world import NoJudge

# Per-domain templates (CLIP's own ImageNet prompts are of this kind: "a photo of a {}.", sec. 3.1.4).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": ("a photo of a {}", "a picture of a {}", "an image of a {}", "a rendering of a {}"),
    "style": ("an image in the style of {}", "{} style", "a picture in the style of {}", "a {} image"),
}
# A hub id: "name" or "owner/name" (letters, digits, "-", "_", "."), not a path on disk.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class JudgeModelError(NoJudge):
    """The configured judge model (`judge_model`) is not a CLIP model that can be loaded: without a judge
    no candidate can be evaluated or gated."""

    def __init__(self, source: str, problem: str):
        super().__init__(
            f"judge_model {source}: {problem}; expected a CLIP model in the transformers format "
            "(a folder with config.json of model_type 'clip', a tokenizer and an image processor, or a hub id)"
        )


def check_judge_model(source: str) -> None:
    """Refuse, before anything is loaded or sampled, a judge model that is a path but not a CLIP folder
    (torch-free: reads config.json only). A hub id is checked when it is loaded.

    Raises:
        JudgeModelError: no such folder, a file, no config.json, or a config whose model_type is not "clip".
    """
    path = Path(source).expanduser()
    if not path.exists():
        if _HUB_ID.match(source) and not source.startswith("."):
            return
        raise JudgeModelError(source, "no such folder")
    if not path.is_dir():
        raise JudgeModelError(source, "is a file, not a folder")
    config = path / "config.json"
    if not config.is_file():
        raise JudgeModelError(source, "has no config.json")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise JudgeModelError(source, "config.json is not a JSON object") from None
    if model_type != "clip":
        raise JudgeModelError(source, f"config.json has model_type {model_type!r}")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it ("1", "true", "yes", "on")."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_clip(source: str, device: str | torch.device = "cpu"):
    """(CLIPModel in eval mode on `device`, CLIPProcessor) from a folder or hub id.

    Raises:
        JudgeModelError: not a CLIP folder, or a model that cannot be loaded (e.g. a hub id not on disk offline).
    """
    from transformers import AutoConfig, CLIPModel, CLIPProcessor

    check_judge_model(source)
    offline = hub_offline()
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
        if config.model_type != "clip":
            raise JudgeModelError(source, f"its config has model_type {config.model_type!r}")
        model = CLIPModel.from_pretrained(source, local_files_only=offline)
        processor = CLIPProcessor.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError, TypeError) as error:
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise JudgeModelError(source, f"cannot be loaded ({cause})") from None
    return model.to(device).eval(), processor


class ClipJudge:
    """Zero-shot CLIP classification of images into the classes of each head (see the module docstring).

    `heads`: per domain, the class names in order (e.g. {"object": ("cat", "dog", "car", ...)}); every
    domain needs templates (`TEMPLATES`, or `templates`). `feature_layers`: which of the vision tower's
    hidden states `feature_maps` returns (default: up to four, evenly spaced, the last included).
    """

    def __init__(
        self,
        model,
        processor,
        heads: dict[str, tuple[str, ...]],
        *,
        templates: dict[str, tuple[str, ...]] | None = None,
        name: str = "clip",
        batch_size: int = 64,
        feature_layers: tuple[int, ...] | None = None,
    ):
        """Raises:
        ValueError: a head without classes, with a class named twice, or a domain without templates."""
        templates = templates or TEMPLATES
        problems = []
        for head, classes in heads.items():
            if not classes:
                problems.append(f"head {head!r} has no classes")
            if len(set(classes)) != len(classes):
                problems.append(f"head {head!r} names a class twice: {', '.join(classes)}")
            if not templates.get(head):
                problems.append(f"no prompt templates for the domain {head!r} (known: {', '.join(templates)})")
        if problems:
            raise ValueError("; ".join(problems))
        self.model, self.processor = model.eval(), processor
        self.name = name
        self.heads = {head: tuple(classes) for head, classes in heads.items()}
        self.templates = {head: tuple(templates[head]) for head in heads}
        self.batch_size = batch_size
        layers = model.config.vision_config.num_hidden_layers
        self.feature_layers = feature_layers or tuple(
            sorted({int(round(x)) for x in np.linspace(1, layers, num=min(4, layers))})
        )
        self.class_embeddings = {head: self._class_embeddings(head) for head in self.heads}

    @classmethod
    def load(cls, source: str, heads: dict[str, tuple[str, ...]], *, device: str = "cpu", **options) -> ClipJudge:
        """The judge of `heads` with the CLIP model at `source` (a folder or a hub id).

        Raises:
            JudgeModelError: `source` is not a loadable CLIP model.
            ValueError: malformed heads (see `__init__`).
        """
        model, processor = load_clip(source, device)
        return cls(model, processor, heads, name=options.pop("name", f"clip:{Path(source).name}"), **options)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @torch.no_grad()
    def _text_embeddings(self, texts: list[str]) -> torch.Tensor:
        inputs = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        pooled = self.model.text_model(**inputs).pooler_output  # the end-of-text token's state
        return F.normalize(self.model.text_projection(pooled), dim=-1)

    def _class_embeddings(self, head: str) -> torch.Tensor:
        """(classes, d): per class, the normalised mean of its normalised template embeddings (sec. 3.1.4)."""
        templates, classes = self.templates[head], self.heads[head]
        texts = [template.format(name) for name in classes for template in templates]
        per_template = self._text_embeddings(texts).reshape(len(classes), len(templates), -1)
        return F.normalize(per_template.mean(dim=1), dim=-1)

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> the processor's resized, cropped, normalised (N, 3, S, S) floats."""
        pixels = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.model.dtype)

    @torch.no_grad()
    def _image_embeddings(self, images: np.ndarray) -> torch.Tensor:
        """(N, d) normalised projected image embeddings, in batches."""
        parts = []
        for start in range(0, len(images), self.batch_size):
            pooled = self.model.vision_model(pixel_values=self._pixels(images[start : start + self.batch_size]))
            parts.append(F.normalize(self.model.visual_projection(pooled.pooler_output), dim=-1))
        return torch.cat(parts) if parts else torch.zeros(0, self.model.config.projection_dim, device=self.device)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Per head, (N, classes) softmax of exp(logit_scale) · cos(image, class) (CLIP's zero-shot logits)."""
        image = self._image_embeddings(images).float()
        scale = self.model.logit_scale.exp().float()
        return {
            head: (scale * image @ text.float().T).softmax(dim=-1).double().cpu().numpy()
            for head, text in self.class_embeddings.items()
        }

    @torch.no_grad()
    def feature_maps(self, images: np.ndarray) -> list[torch.Tensor]:
        """The vision tower's hidden states at `feature_layers`, each (N, C, h, w): the class token dropped,
        the patch tokens laid out on their h x w grid (the layers of the LPIPS-style retention distance)."""
        per_layer: list[list[torch.Tensor]] = [[] for _ in self.feature_layers]
        for start in range(0, len(images), self.batch_size):
            out = self.model.vision_model(
                pixel_values=self._pixels(images[start : start + self.batch_size]), output_hidden_states=True
            )
            for k, layer in enumerate(self.feature_layers):
                tokens = out.hidden_states[layer][:, 1:, :]  # drop the class token
                n, count, channels = tokens.shape
                side = int(round(count**0.5))
                grid = tokens.reshape(n, side, side, channels).permute(0, 3, 1, 2)
                per_layer[k].append(grid.float().cpu())
        return [torch.cat(parts) for parts in per_layer]

    @torch.no_grad()
    def embeddings(self, images: np.ndarray) -> np.ndarray:
        """(N, projection_dim) float64: the normalised projected image embeddings (the space for FID/KID)."""
        return self._image_embeddings(images).double().cpu().numpy()

    def head_of(self, concept: str) -> str:
        """The head whose classes include `concept`.

        Raises:
            KeyError: no head names it.
        """
        for head, classes in self.heads.items():
            if concept in classes:
                return head
        raise KeyError(f"{concept!r} is not a class of this judge ({'; '.join(map(', '.join, self.heads.values()))})")

    def target_scores(self, images: np.ndarray, target: str, probabilities: dict | None = None) -> dict:
        """What a takedown is judged by, on these images: `top1`, the fraction on which the target is the top-1
        class of its head, and `mean_probability`, the target's mean probability; `n` images.
        `probabilities` reuses this judge's output on the same images."""
        head = self.head_of(target)
        probs = (probabilities or self.probabilities(images))[head]
        index = self.heads[head].index(target)
        return {
            "head": head,
            "target": target,
            "top1": float((probs.argmax(axis=1) == index).mean()) if len(probs) else float("nan"),
            "mean_probability": float(probs[:, index].mean()) if len(probs) else float("nan"),
            "n": len(probs),
        }
