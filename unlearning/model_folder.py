"""The layout of a model folder, defined once: what one unlearning step writes (unlearning/loop.py), what
`lethe unlearn --out` keeps beside it, and what registry/loading.py `load_parent` reads back.

    <folder>/delta.safetensors              the step's delta from the base (unlearning/delta.py)
    <folder>/summary.json                   the step's record (config, base, sha256s); written last, so a
                                            summary means the step finished
    <folder>/checkpoint.pt                  while training: everything needed to resume
    <folder>/lineage.safetensors            a closed form's per-concept terms (format `lethe-lineage/1`)
    <folder>/parents/NNN-delta.safetensors  the ancestors' deltas, oldest first (a folder that is a model
                                            by itself: `lethe unlearn --model <folder>` chains on it)
    <folder>/parents/lineage.safetensors    the parent's lineage terms (not a delta)
    <folder>/report/                        the step's evaluation

A registered version holds the same delta and lineage file names (registry/versions.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from unlearning.files import replace_atomically, sha256_file

DELTA_FILE = "delta.safetensors"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
LINEAGE_FILE = "lineage.safetensors"  # a closed form's per-concept terms, re-solved from at the next request
LINEAGE_FORMAT = "lethe-lineage/1"
PARENTS_DIR = "parents"
REPORT_DIR = "report"


def is_model_folder(path: Path) -> bool:
    """A folder one unlearning step finished in (`lethe unlearn --out`): its delta and its summary."""
    return (path / SUMMARY_FILE).is_file() and (path / DELTA_FILE).is_file()


def read_summary(path: Path) -> dict:
    return json.loads((path / SUMMARY_FILE).read_text())


def erased_by(summary: dict) -> list[str]:
    """The concepts the folder's deltas erased, in order: those before its step, then its own."""
    config = summary.get("config", {})
    return [c for c in (*config.get("erased", []), config.get("concept")) if c]


def ancestor_path(path: Path, index: int) -> Path:
    """Where the `index`-th ancestor's delta (0: the oldest) is kept."""
    return path / PARENTS_DIR / f"{index:03d}-delta.safetensors"


def delta_files(path: Path) -> list[Path]:
    """The deltas from the base to the folder's model, oldest first: its ancestors', then its own (the
    parent's lineage file lies beside the ancestors and is not one of them)."""
    return sorted((path / PARENTS_DIR).glob("*-delta.safetensors")) + [path / DELTA_FILE]


def lineage_files(path: Path) -> list[Path]:
    """The lineage terms kept in the folder, oldest first (the parent's, then the step's own)."""
    return [p for p in (path / PARENTS_DIR / LINEAGE_FILE, path / LINEAGE_FILE) if p.is_file()]


def save_lineage(path: Path, terms: dict, concepts: list[str]) -> dict:
    """Write a closed form's lineage terms (safetensors, atomically); returns what the summary records."""
    from safetensors.torch import save_file

    tensors = {  # sums in float32; the anchor words stay bytes
        k: (v.detach().float() if v.is_floating_point() else v).cpu().contiguous() for k, v in terms.items()
    }
    replace_atomically(
        path, lambda tmp: save_file(tensors, tmp, metadata={"format": LINEAGE_FORMAT, "concepts": json.dumps(concepts)})
    )
    return {"file": str(path), "sha256": sha256_file(path), "concepts": concepts}


def load_lineage(path: Path) -> dict | None:
    """The lineage terms a closed-form step kept beside its delta (None when it kept none)."""
    from safetensors.torch import load_file

    return load_file(str(path)) if path.is_file() else None
