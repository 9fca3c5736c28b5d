"""`load_pipeline("models:/<name>@<alias>")`: exactly what was registered, verified, as a pipeline.

The alias is resolved once, to a version number; every later step uses that number, so a promotion
that happens while a consumer loads cannot mix two versions. Each version on the chain from the base
to the requested one is downloaded, its manifest authenticated against the registry's tag, every file
checked against the manifest, and the deltas applied to the base oldest first (unlearning/delta.py).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from registry.integrity import IntegrityError, read_manifest, verify_files
from registry.versions import DELTA_NAME, TAG_COMPLETE, TAG_MANIFEST_SHA, ModelRegistry
from unlearning.delta import apply_delta_files
from unlearning.sampling import load_model, model_identity

_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9._-]+)(?:@(?P<alias>[A-Za-z0-9._-]+)|/(?P<version>[0-9]+))$")


@dataclass(frozen=True)
class ModelUri:
    name: str
    alias: str | None
    version: int | None


def parse_model_uri(uri: str) -> ModelUri:
    """Parse `models:/name@alias` or `models:/name/N`.

    Raises:
        ValueError: anything else.
    """
    match = _URI.fullmatch(uri.strip())
    if not match:
        raise ValueError(f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    version = match.group("version")
    return ModelUri(match.group("name"), match.group("alias"), int(version) if version else None)


@dataclass(frozen=True)
class VersionArtifacts:
    version: int
    folder: Path
    manifest: dict


def resolve_version(registry: ModelRegistry, uri: ModelUri) -> int:
    if uri.version is not None:
        return uri.version
    version = registry.alias_version(uri.alias)
    if version is None:
        raise LookupError(f"models:/{uri.name}@{uri.alias}: no version has this alias")
    return version


def fetch_chain(registry: ModelRegistry, version: int, workdir: Path) -> list[VersionArtifacts]:
    """Download and verify `version` and its ancestors; returns them oldest first.

    Raises:
        IntegrityError: a manifest or file was altered, truncated or is missing (named).
    """
    chain, seen, current = [], set(), version
    while current is not None:
        if current in seen:
            raise IntegrityError(f"version {current}: its lineage loops")
        seen.add(current)
        tags = registry.version_tags(current)
        if tags.get(TAG_COMPLETE) != "true":
            raise IntegrityError(f"version {current}: registration never completed")
        folder = registry.download(current, workdir / f"v{current}")
        manifest = read_manifest(folder, expected_sha256=tags.get(TAG_MANIFEST_SHA))
        try:
            verify_files(folder, manifest)
        except IntegrityError as error:
            raise IntegrityError(f"version {current}: {error}") from None
        chain.append(VersionArtifacts(current, folder, manifest))
        current = manifest.get("parent_version")
    return list(reversed(chain))


def load_pipeline(uri: str, *, tracking_uri: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load a registered version as a diffusers pipeline, verified end to end.

    Raises:
        ValueError: malformed URI. LookupError: unknown alias or version.
        IntegrityError: a tampered, truncated or missing artifact (the message names the file), or a
            base model whose sha256 differs from the one the deltas were trained against.
    """
    parsed = parse_model_uri(uri)
    registry = ModelRegistry(tracking_uri, parsed.name)
    version = resolve_version(registry, parsed)
    with tempfile.TemporaryDirectory(prefix="lethe-load-") as tmp:
        chain = fetch_chain(registry, version, Path(tmp))
        newest = chain[-1].manifest
        base_id, base_sha = model_identity(newest["base_model"])
        if base_sha != newest["base_sha256"]:
            raise IntegrityError(
                f"base model {base_id}: sha256 {base_sha[:12]}… differs from {newest['base_sha256'][:12]}… that version {version} was trained on"
            )
        pipe = load_model(newest["base_model"], device="cpu", dtype=torch.float32)
        apply_delta_files(pipe, [link.folder / DELTA_NAME for link in chain])
    pipe.lethe_version = {"model": parsed.name, "version": version, "erased": newest.get("erased", []), "uri": uri,
                          "base_model": newest["base_model"]}
    return pipe.to(device=device, dtype=dtype)
