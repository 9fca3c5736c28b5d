"""`load_pipeline("models:/<name>@<alias>")`: exactly what was registered, verified, as a pipeline.

The alias is resolved once, to a version number; every later step uses that number, so a promotion
that happens while a consumer loads cannot mix two versions. Each version on the chain from the base
to the requested one is downloaded, its manifest authenticated against the registry's tag, every file
checked against the manifest, and the deltas applied to the base oldest first (unlearning/delta.py).

`load_parent` is the one function that does this, for every way a model is named (a base, an
`lethe unlearn` folder — its layout: unlearning/model_folder.py —, a registered version): the flow, every
`lethe` command that takes `--model`, and `load_pipeline` call it.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from registry.integrity import IntegrityError, read_manifest, sha256_file, verify_files
from registry.versions import DELTA_NAME, TAG_COMPLETE, TAG_MANIFEST_SHA, ModelRegistry
from unlearning import model_folder
from unlearning.delta import apply_delta_files
from unlearning.model_folder import LINEAGE_FILE, load_lineage
from unlearning.sampling import load_model, model_identity

_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9._-]+)(?:@(?P<alias>[A-Za-z0-9._-]+)|/(?P<version>[0-9]+))$")


class ModelUriError(ValueError):
    """Not a models:/<name>@<alias> or models:/<name>/<version> URI."""


class UnknownVersion(LookupError):
    """No version has this alias (or number)."""


@dataclass(frozen=True)
class ModelUri:
    name: str
    alias: str | None
    version: int | None


def parse_model_uri(uri: str) -> ModelUri:
    """Parse `models:/name@alias` or `models:/name/N`.

    Raises:
        ModelUriError: anything else.
    """
    match = _URI.fullmatch(uri.strip())
    if not match:
        raise ModelUriError(f"{uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    version = match.group("version")
    return ModelUri(match.group("name"), match.group("alias"), int(version) if version else None)


@dataclass(frozen=True)
class VersionArtifacts:
    version: int
    folder: Path
    manifest: dict


def resolve_version(registry: ModelRegistry, uri: ModelUri) -> int:
    if uri.version is not None:
        if not registry.version_exists(uri.version):
            raise UnknownVersion(f"models:/{uri.name}/{uri.version}: no such version")
        return uri.version
    version = registry.alias_version(uri.alias)
    if version is None:
        raise UnknownVersion(f"models:/{uri.name}@{uri.alias}: no version has this alias")
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


@dataclass(frozen=True)
class LoadedModel:
    """A model to start an unlearning step from (or to serve, or to judge), and exactly where it came from."""

    pipe: object  # the diffusers pipeline: the base with every ancestor's delta applied
    base_model: str  # the base the deltas apply to: 'shapes', a diffusers folder, ...
    base_sha256: str
    ancestors: list[Path]  # delta files from the base to this model, oldest first
    identity: str  # sha256 naming exactly this model (the base's when there are no deltas); keys caches
    version: int | None = None  # the registered version, when the source is models:/...
    erased: list[str] = field(default_factory=list)  # concepts the deltas erased, in order
    lineage: dict | None = None  # the newest closed-form lineage terms on the chain (unlearning/loop.py), if any


def load_parent(
    source: str,
    *,
    tracking_uri: str | None,
    workdir: Path,
    base_model: str | None = None,
    extra_deltas: tuple[Path, ...] = (),
) -> LoadedModel:
    """The one way to load a parent model, whatever names it.

    `source` is a base model ('shapes' or a diffusers folder), an `lethe unlearn --out` folder (its
    summary names the base; its deltas sit beside it), or a registered version
    `models:/<name>@<alias>` / `models:/<name>/<N>` (the alias resolved once; the chain downloaded
    into `workdir` and every file verified). `base_model`, when given, is the base to load in place
    of the one recorded (the flow's configured base); either way its sha256 must be the one the
    deltas were trained against. `extra_deltas` are applied after the source's own (a candidate: its
    parent plus the delta just trained).

    Raises:
        FileNotFoundError: not a model. ModelUriError: a malformed models:/ URI. UnknownVersion: an
        unknown alias. IntegrityError: a tampered, truncated or missing artifact, or a base whose
        sha256 differs from the one the deltas were trained against.
    """
    version, erased, recorded_sha = None, [], None
    if source.startswith("models:/"):
        parsed = parse_model_uri(source)
        registry = ModelRegistry(tracking_uri, parsed.name)
        version = resolve_version(registry, parsed)
        chain = fetch_chain(registry, version, workdir)
        newest = chain[-1].manifest
        recorded_base, recorded_sha, erased = newest["base_model"], newest["base_sha256"], newest.get("erased", [])
        ancestors = [link.folder / DELTA_NAME for link in chain]
        lineage_files = [link.folder / LINEAGE_FILE for link in chain if LINEAGE_FILE in link.manifest["files"]]
        what = f"version {version}"
    elif model_folder.is_model_folder(Path(source)):
        summary = model_folder.read_summary(Path(source))
        recorded_base, recorded_sha = summary["base_model"], summary.get("base_sha256")
        ancestors = model_folder.delta_files(Path(source))
        lineage_files = model_folder.lineage_files(Path(source))
        erased = model_folder.erased_by(summary)
        what = str(source)
    else:
        recorded_base, ancestors, what, lineage_files = source, [], source, []
    ancestors = [*ancestors, *map(Path, extra_deltas)]
    base_model = base_model or recorded_base
    base_id, base_sha = model_identity(base_model)
    if recorded_sha is not None and recorded_sha != base_sha:
        raise IntegrityError(
            f"base model {base_id}: sha256 {base_sha[:12]}… differs from {recorded_sha[:12]}… "
            f"that {what} was trained on"
        )
    pipe = load_model(base_model, device="cpu", dtype=torch.float32)
    if ancestors:
        apply_delta_files(pipe, ancestors)
    identity = hashlib.sha256(base_sha.encode())
    for path in ancestors:
        identity.update(sha256_file(path).encode())
    return LoadedModel(
        lineage=load_lineage(lineage_files[-1]) if lineage_files else None,
        pipe=pipe,
        base_model=base_model,
        base_sha256=base_sha,
        ancestors=ancestors,
        identity=identity.hexdigest() if ancestors else base_sha,
        version=version,
        erased=[e for e in erased if e],
    )


def load_pipeline(uri: str, *, tracking_uri: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load a registered version as a diffusers pipeline, verified end to end.

    Raises:
        ModelUriError: malformed URI. UnknownVersion: unknown alias or version.
        IntegrityError: a tampered, truncated or missing artifact (the message names the file), or a
            base model whose sha256 differs from the one the deltas were trained against.
    """
    parsed = parse_model_uri(uri)
    with tempfile.TemporaryDirectory(prefix="lethe-load-") as tmp:
        parent = load_parent(uri, tracking_uri=tracking_uri, workdir=Path(tmp))
    pipe = parent.pipe
    pipe.lethe_version = {
        "model": parsed.name,
        "version": parent.version,
        "erased": parent.erased,
        "uri": uri,
        "base_model": parent.base_model,
    }
    return pipe.to(device=device, dtype=dtype)
