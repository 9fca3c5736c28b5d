"""The shipped shapes-world weights as files: where they lie, whether they are there, their digest.

Torch-free on purpose: `lethe status` reports them without loading a model (unlearning/shapes/model.py
loads them).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHAPES_BASE_MODEL = "shapes"  # how settings and `--model` name the shipped base
# The CLIP-format judge (unlearning/shapes/clip_judge.py) ships beside the world's weights but is no part of the
# base model: remaking it must not change the base's identity (caches, manifests, deltas' parents).
NOT_THE_BASE = ("clip_judge",)


def weights_available(weights_dir: Path = WEIGHTS_DIR) -> bool:
    return (weights_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (
        weights_dir / "vae" / "diffusion_pytorch_model.safetensors"
    ).is_file()


def weights_sha256(weights_dir: str | Path | None = None) -> str:
    """One digest over the committed weight files and configs: the base model's identity in caches (the
    folders of `NOT_THE_BASE` left out)."""
    weights_dir = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    digest = hashlib.sha256()
    files = (p for p in weights_dir.rglob("*") if p.is_file())
    for path in sorted(p for p in files if p.relative_to(weights_dir).parts[0] not in NOT_THE_BASE):
        digest.update(path.relative_to(weights_dir).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def weights_bytes(weights_dir: Path = WEIGHTS_DIR) -> int:
    return sum(p.stat().st_size for p in weights_dir.rglob("*") if p.is_file()) if weights_dir.is_dir() else 0
