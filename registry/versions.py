"""Model versions in the MLflow registry: register a candidate, move aliases, read lineage.

One MLflow run per request (params: request and hyper-parameters; metrics: every evaluation number)
and one model version, logged as a pyfunc model whose artifacts are the delta, the manifest, the
report and the model card. The version number used everywhere is the one `create_model_version`
returns — never "the latest". Aliases, not stages: `candidate`, `production`, `previous-production`.

Registration order makes a crash harmless: artifacts and run first, then the version, then its tags,
and only then the `candidate` alias. A version whose registration failed part-way is deleted (best
effort) and is never under an alias, since aliases are the only thing consumers resolve.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from registry.integrity import MANIFEST_NAME, sha256_file, write_manifest
from registry.model_card import model_card
from registry.retries import with_retries
from unlearning.model_folder import DELTA_FILE

log = logging.getLogger(__name__)

CANDIDATE, PRODUCTION, PREVIOUS_PRODUCTION = "candidate", "production", "previous-production"
TAG_REQUEST = "lethe.request_id"
TAG_PARENT = "lethe.parent_version"
TAG_ERASED = "lethe.erased"
TAG_GATE = "lethe.gate"
TAG_GATE_REASONS = "lethe.gate_reasons"
TAG_DELTA_SHA = "lethe.delta_sha256"
TAG_MANIFEST_SHA = "lethe.manifest_sha256"
TAG_APPROVAL = "lethe.approval"
TAG_COMPLETE = "lethe.complete"
TAG_REVOKED = "lethe.revoked"  # JSON {revocation, reason}: its request was revoked; production no longer holds it
TAG_SUPERSEDED_BY = "lethe.superseded_by"  # JSON {version, revocation}: re-derived without a revoked request
TAG_REPLAYS = "lethe.replays"  # the request a re-derived version replays
DELTA_NAME = DELTA_FILE  # the same file name as in a model folder (unlearning/model_folder.py)
# The pyfunc wrapper is logged as code (MLflow's models-from-code), so this module never imports it:
# the wrapper loads through registry/loading.py, which imports this module.
PYFUNC_CODE = str(Path(__file__).with_name("pyfunc.py"))
CARD_NAME = "README.md"
EXPERIMENT = "lethe"


def _decision(tags: dict[str, str]) -> str | None:
    """ "approved", "rejected" or None, from a version's approval tag."""
    try:
        return json.loads(tags.get(TAG_APPROVAL, "{}")).get("decision")
    except (json.JSONDecodeError, AttributeError):
        return None


def _signature():
    """The pyfunc's signature: prompts in, images out, and the sampler's params with their defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType

    params = [ParamSpec("seed", "long", 0), ParamSpec("steps", "long", 25), ParamSpec("guidance_scale", "double", 5.0)]
    return ModelSignature(
        inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec(AnyType())]), params=ParamSchema(params)
    )


class PromotionRefused(Exception):
    """Promotion or rollback was refused (gate failed, rejected, or production moved meanwhile)."""


@dataclass(frozen=True)
class Candidate:
    """Everything one request contributes to the registry."""

    request_id: str
    request: dict  # the ledger body: concept, synonyms, anchor, preserve, method, reason, requester
    delta_path: Path
    parent_version: int | None
    erased: list[str]  # cumulative, in order, this request's concept last
    base_model: str
    base_sha256: str
    params: dict
    metrics: dict[str, float]
    gate_passed: bool
    gate_reasons: list[str]
    report_dir: Path | None = None
    extra_files: dict = field(default_factory=dict)  # artifact name -> file (e.g. a closed form's lineage terms)
    revoked: list[dict] = field(
        default_factory=list
    )  # revocations this lineage went through: {concept, request_id, ...}


class ModelRegistry:
    """One registered model (= one lineage) in one MLflow tracking server or store."""

    def __init__(self, tracking_uri: str, model_name: str, artifact_root: str | None = None):
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # ---------------------------------------------------------------- register
    def register_candidate(self, candidate: Candidate) -> int:
        """Register a candidate version and point `candidate` at it; idempotent per request id.

        A run that stopped part-way through an earlier registration of the same request (killed: no
        cleanup ran) left either a complete version, which is returned (and gets the `candidate` alias
        it may have missed), or a version without its completeness tag, which is deleted first: a
        request never has two versions.

        Returns:
            The version number MLflow assigned (or the existing one for this request).
        """
        if (existing := self.version_for_request(candidate.request_id)) is not None:
            if candidate.gate_passed:
                self._alias_undecided_candidate(existing)
            return existing
        self._remove_incomplete(candidate.request_id)
        self._ensure_registered_model()
        with tempfile.TemporaryDirectory(prefix="lethe-register-") as tmp:
            folder = Path(tmp) / "lethe"  # becomes artifacts/lethe/ inside the logged model
            files = self._stage_artifacts(candidate, folder)
            manifest_path = write_manifest(
                folder,
                files=files,
                model_name=self.model_name,
                request_id=candidate.request_id,
                parent_version=candidate.parent_version,
                erased=candidate.erased,
                base_model=candidate.base_model,
                base_sha256=candidate.base_sha256,
                gate={"passed": candidate.gate_passed, "reasons": candidate.gate_reasons},
            )
            run_id, model = self._log_run(candidate, folder)
            version = self._create_version(
                candidate, run_id, model, sha256_file(folder / DELTA_NAME), sha256_file(manifest_path)
            )
        if candidate.gate_passed:
            self._set_alias(CANDIDATE, version)
        return version

    def _alias_undecided_candidate(self, version: int) -> None:
        """Point `candidate` at a version nobody has decided on yet (not approved, rejected or in production)."""
        if (
            _decision(self.version_tags(version)) is None
            and self.alias_version(PRODUCTION) != version
            and self.alias_version(CANDIDATE) != version
        ):
            self._set_alias(CANDIDATE, version)

    def _remove_incomplete(self, request_id: str) -> None:
        for version in self._versions_for_request(request_id):
            if version.tags.get(TAG_COMPLETE) != "true":
                log.warning(
                    "deleting version %s of %s: its registration for %s never completed",
                    version.version,
                    self.model_name,
                    request_id,
                )
                with_retries(
                    lambda number=str(version.version): self.client.delete_model_version(self.model_name, number),
                    what="delete version",
                )

    def _ensure_registered_model(self) -> None:
        try:
            with_retries(
                lambda: self.client.create_registered_model(self.model_name, description="Lethe lineage"),
                what="create model",
            )
        except MlflowException as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code) and "already exists" not in str(error):
                raise

    def _stage_artifacts(self, candidate: Candidate, folder: Path) -> list[str]:
        folder.mkdir(parents=True)
        shutil.copyfile(candidate.delta_path, folder / DELTA_NAME)
        files = [DELTA_NAME]
        for name, path in sorted(candidate.extra_files.items()):  # listed in the manifest, verified on load
            shutil.copyfile(path, folder / name)
            files.append(name)
        if candidate.report_dir is not None and candidate.report_dir.is_dir():
            for path in sorted(candidate.report_dir.rglob("*")):
                if path.is_file():
                    target = folder / "report" / path.relative_to(candidate.report_dir)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
                    files.append(target.relative_to(folder).as_posix())
        card = model_card(
            model_name=self.model_name,
            version_label=f"(request {candidate.request_id})",
            base_model=candidate.base_model,
            erased=candidate.erased,
            request=candidate.request,
            gate_passed=candidate.gate_passed,
            gate_reasons=candidate.gate_reasons,
            metrics=candidate.metrics,
            revoked=candidate.revoked,
            params=candidate.params,
        )
        (folder / CARD_NAME).write_text(card)
        files.append(CARD_NAME)
        return files

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        location = self.artifact_root if self.artifact_root and not self.tracking_uri.startswith("http") else None
        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=location)
        except MlflowException:  # created concurrently
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def _log_run(self, candidate: Candidate, folder: Path) -> tuple[str, object]:
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        experiment_id = with_retries(self._experiment_id, what="get experiment")
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"request-{candidate.request_id}") as run:
            mlflow.set_tags({TAG_REQUEST: candidate.request_id, "lethe.lineage": self.model_name})
            params = {
                "request_id": candidate.request_id,
                **{f"request.{k}": v for k, v in candidate.request.items()},
                **candidate.params,
            }
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            mlflow.log_metrics({k: float(v) for k, v in candidate.metrics.items()})
            info = with_retries(
                lambda: mlflow.pyfunc.log_model(
                    name="model",
                    python_model=PYFUNC_CODE,  # "models from code": no import of the loader here
                    artifacts={"lethe": str(folder)},
                    pip_requirements=["lethe"],
                ),
                what="log model artifacts",
            )
            # the params schema that `predict`'s type hints cannot give (registry/pyfunc.py)
            with_retries(lambda: mlflow.models.set_signature(info.model_uri, _signature()), what="set signature")
        return run.info.run_id, info

    def _create_version(self, candidate: Candidate, run_id: str, model, delta_sha: str, manifest_sha: str) -> int:
        tags = {
            TAG_REQUEST: candidate.request_id,
            TAG_PARENT: "" if candidate.parent_version is None else str(candidate.parent_version),
            TAG_ERASED: json.dumps(candidate.erased),
            TAG_GATE: "passed" if candidate.gate_passed else "failed",
            TAG_GATE_REASONS: json.dumps(candidate.gate_reasons)[:4000],
            TAG_DELTA_SHA: delta_sha,
            TAG_MANIFEST_SHA: manifest_sha,
            **({TAG_REPLAYS: candidate.request["replays"]} if candidate.request.get("replays") else {}),
        }
        created = with_retries(
            lambda: self.client.create_model_version(
                self.model_name, source=model.model_uri, run_id=run_id, tags=tags, model_id=model.model_id
            ),
            what="create model version",
        )
        version = int(created.version)
        try:
            # The completeness tag is the last thing written: a version without it is half-registered.
            with_retries(
                lambda: self.client.set_model_version_tag(self.model_name, str(version), TAG_COMPLETE, "true"),
                what="tag version",
            )
        except Exception:
            try:
                self.client.delete_model_version(self.model_name, str(version))
            finally:
                raise
        return version

    # ---------------------------------------------------------------- read
    def version_for_request(self, request_id: str) -> int | None:
        """The complete version registered for a request, if any (used for idempotency)."""
        complete = [
            int(v.version) for v in self._versions_for_request(request_id) if v.tags.get(TAG_COMPLETE) == "true"
        ]
        return min(complete) if complete else None

    def _versions_for_request(self, request_id: str) -> list:
        try:
            return list(
                self.client.search_model_versions(f"name='{self.model_name}' and tags.`{TAG_REQUEST}`='{request_id}'")
            )
        except MlflowException as error:
            if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code):
                return []
            raise

    def alias_version(self, alias: str) -> int | None:
        try:
            return int(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException as error:
            if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code) or "not found" in str(error).lower():
                return None
            raise

    def version_exists(self, version: int) -> bool:
        try:
            self.client.get_model_version(self.model_name, str(version))
        except MlflowException as error:
            if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code) or "not found" in str(error).lower():
                return False
            raise
        return True

    def version_tags(self, version: int) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, str(version)).tags)

    def erased_in(self, version: int | None) -> list[str]:
        return [] if version is None else json.loads(self.version_tags(version).get(TAG_ERASED, "[]"))

    def download(self, version: int, destination: Path) -> Path:
        """Download a version's Lethe artifacts; returns the folder holding manifest.json."""
        # The version's own artifact location, asked of this registry: its source is a `models:/m-…`
        # URI, which MLflow resolves through the process-wide registry URI, not the one passed here
        # (a fresh process that only loads would look in ./mlflow.db and find nothing).
        location = with_retries(
            lambda: self.client.get_model_version_download_uri(self.model_name, str(version)),
            what=f"locate version {version}",
        )
        local = with_retries(
            lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(destination), tracking_uri=self.tracking_uri
            ),
            what=f"download version {version}",
        )
        folder = Path(local) / "artifacts" / "lethe"
        if not (folder / MANIFEST_NAME).is_file():
            folder = Path(local) / "artifacts"
        return folder

    # ---------------------------------------------------------------- aliases
    # Every alias move and decision tag goes through `with_retries`: a transient MLflow error must not
    # leave the ledger's decision (written first, registry/governance.py) without its alias for want of
    # one more try. Each move is idempotent, so a retry after a lost answer does no harm.
    def _set_alias(self, alias: str, version: int) -> None:
        with_retries(
            lambda: self.client.set_registered_model_alias(self.model_name, alias, str(version)),
            what=f"point {alias} at version {version}",
        )

    def _delete_alias(self, alias: str) -> None:
        with_retries(lambda: self.client.delete_registered_model_alias(self.model_name, alias), what=f"remove {alias}")

    def _tag(self, version: int, key: str, value: str) -> None:
        with_retries(
            lambda: self.client.set_model_version_tag(self.model_name, str(version), key, value),
            what=f"tag version {version}",
        )

    def _drop_candidate_alias(self, version: int) -> None:
        if self.alias_version(CANDIDATE) == version:
            self._delete_alias(CANDIDATE)

    def promote(self, version: int, *, expected_production: int | None, approval: dict) -> int | None:
        """Point `production` at `version` if it still points at `expected_production`.

        Records the old production as `previous-production` and the approval as a tag. Idempotent: a
        promotion resumed after a crash (the ledger says `promoting`) finds production on `version` and
        only finishes the bookkeeping.

        Raises:
            PromotionRefused: the version failed its gate or was rejected, or production moved.
        """
        tags = self.version_tags(version)
        if tags.get(TAG_GATE) != "passed":
            raise PromotionRefused(f"version {version} failed its gate and can never be promoted")
        if _decision(tags) == "rejected":
            raise PromotionRefused(f"version {version} was rejected and can never be promoted")
        current = self.alias_version(PRODUCTION)
        if current == version:  # resumed, or approved twice at once: the alias moved already
            self._drop_candidate_alias(version)
            return self.alias_version(PREVIOUS_PRODUCTION)
        if current != expected_production:
            raise PromotionRefused(
                f"production is version {current}, but this candidate was built on version {expected_production}; "
                "re-run the request on the current production"
            )
        self._tag(version, TAG_APPROVAL, json.dumps({"decision": "approved", **approval}))
        if current is not None:
            self._set_alias(PREVIOUS_PRODUCTION, current)
        self._set_alias(PRODUCTION, version)
        self._drop_candidate_alias(version)
        return current

    def accept(self, version: int, approval: dict) -> None:
        """Approve a revocation's replay that is not the chain's head: recorded, no alias moves (it becomes
        the parent of the next replay; production moves with the head)."""
        self._tag(version, TAG_APPROVAL, json.dumps({"decision": "accepted", **approval}))
        self._drop_candidate_alias(version)

    def mark_revoked(self, version: int, *, revocation: str, reason: str) -> None:
        self._tag(version, TAG_REVOKED, json.dumps({"revocation": revocation, "reason": reason})[:4000])

    def mark_superseded(self, version: int, *, by: int | None, revocation: str) -> None:
        self._tag(version, TAG_SUPERSEDED_BY, json.dumps({"version": by, "revocation": revocation}))

    def point_production(self, version: int | None) -> None:
        """Move `production` to `version` (None: no version, the base), keeping the old one as
        `previous-production` (a revocation with nothing to replay). Idempotent."""
        current = self.alias_version(PRODUCTION)
        if current is not None and current != version:
            self._set_alias(PREVIOUS_PRODUCTION, current)
        if version is None:
            if current is not None:
                self._delete_alias(PRODUCTION)
        else:
            self._set_alias(PRODUCTION, version)

    def mark_rejected(self, version: int, approval: dict) -> None:
        self._tag(version, TAG_APPROVAL, json.dumps({"decision": "rejected", **approval}))
        self._drop_candidate_alias(version)

    def rollback(self, to_version: int) -> int | None:
        """Point `production` back at an earlier, once-approved version.

        Raises:
            PromotionRefused: the target was never approved (or failed its gate).
        """
        tags = self.version_tags(to_version)
        if tags.get(TAG_GATE) != "passed" or _decision(tags) != "approved":
            raise PromotionRefused(f"version {to_version} was never approved for production")
        current = self.alias_version(PRODUCTION)
        if current is not None and current != to_version:
            self._set_alias(PREVIOUS_PRODUCTION, current)
        self._set_alias(PRODUCTION, to_version)
        return current
