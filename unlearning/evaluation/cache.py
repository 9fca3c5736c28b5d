"""Base-model images cached on disk, so re-evaluating a lineage never regenerates them.

Key = sha256 of (model sha256, prompt, seed, sampler settings); value = a lossless PNG. Writes go to
a temporary name and are renamed, so a crash never leaves a torn image in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from unlearning.sampling import generate


def cache_key(model_sha256: str, prompt: str, seed: int, sampler: dict) -> str:
    payload = json.dumps(
        {"model": model_sha256, "prompt": prompt, "seed": int(seed), "sampler": sampler}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class ImageCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.png"

    def get(self, key: str) -> np.ndarray | None:
        path = self._path(key)
        if not path.is_file():
            return None
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    def put(self, key: str, image: np.ndarray) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        Image.fromarray(image).save(tmp, format="PNG")
        os.replace(tmp, path)


def generate_cached(
    pipe, prompts: list[str], seeds: list[int], *, model_sha256: str, sampler: dict, cache: ImageCache | None
) -> tuple[np.ndarray, int]:
    """Images for (prompt, seed) pairs, generating only those not cached. Returns (images, generated)."""
    keys = [cache_key(model_sha256, p, s, sampler) for p, s in zip(prompts, seeds)]
    found = [cache.get(k) if cache else None for k in keys]
    missing = [i for i, image in enumerate(found) if image is None]
    if missing:
        fresh = generate(
            pipe,
            [prompts[i] for i in missing],
            [seeds[i] for i in missing],
            steps=sampler["steps"],
            guidance_scale=sampler["guidance_scale"],
        )
        for i, image in zip(missing, fresh):
            found[i] = image
            if cache:
                cache.put(keys[i], image)
    return np.stack(found), len(missing)
