"""Small file helpers every layer uses: digests and writes that a kill can never leave half done."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def replace_atomically(path: Path, write) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`: readers see the
    old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def write_json(path: Path, payload: dict, *, sort_keys: bool = False) -> Path:
    return replace_atomically(
        Path(path), lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")
    )


def save_torch(path: Path, state: dict) -> Path:
    import torch

    return replace_atomically(Path(path), lambda tmp: torch.save(state, tmp))
