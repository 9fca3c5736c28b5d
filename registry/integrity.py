"""sha256 manifests: every artifact of a version is named with its digest, and checked on load.

The manifest itself is protected by a registry tag (`lethe.manifest_sha256`) written when the version
is registered, so an edited manifest is caught as surely as an edited delta.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path

from unlearning.files import sha256_file

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "lethe-manifest/1"
_LIBRARIES = ("lethe", "torch", "diffusers", "transformers", "peft", "safetensors", "mlflow")


class IntegrityError(Exception):
    """An artifact is missing, truncated or altered; the message names the file."""


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(folder: Path, *, files: list[str], **fields) -> Path:
    """Write folder/manifest.json with the sha256 and size of each listed file plus `fields`."""
    entries = {}
    for name in sorted(files):
        path = folder / name
        entries[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {"format": MANIFEST_FORMAT, "files": entries, "libraries": library_versions(), **fields}
    target = folder / MANIFEST_NAME
    target.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return target


def read_manifest(folder: Path, expected_sha256: str | None = None) -> dict:
    """Read and, when the registry's digest is given, authenticate a manifest.

    Raises:
        IntegrityError: missing, altered (digest mismatch) or not a Lethe manifest.
    """
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise IntegrityError(f"{MANIFEST_NAME}: missing from {folder}")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise IntegrityError(f"{MANIFEST_NAME}: sha256 differs from the one registered (altered manifest)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise IntegrityError(f"{MANIFEST_NAME}: not valid JSON ({error})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"{MANIFEST_NAME}: unknown format {manifest.get('format')!r}")
    return manifest


def verify_files(folder: Path, manifest: dict) -> None:
    """Check every file the manifest lists: present, same size, same sha256.

    Raises:
        IntegrityError: naming the first file that is missing, truncated or altered.
    """
    for name, entry in sorted(manifest["files"].items()):
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{name}: missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise IntegrityError(f"{name}: {size} bytes, manifest says {entry['bytes']} (truncated or altered)")
        if sha256_file(path) != entry["sha256"]:
            raise IntegrityError(f"{name}: sha256 mismatch (altered)")
