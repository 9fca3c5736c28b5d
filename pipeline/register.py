"""Register: the candidate as a version of the lineage's registered model (registry/versions.py).

One MLflow run and one model version per request, idempotent per request id: a request registered
before (a resumed run) gets its existing version back, never a second one.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.claim import registry_for
from pipeline.revoke import revocations_of_lineage
from pipeline.settings import LetheSettings
from pipeline.values import Outcome, Parent
from registry.versions import Candidate


def register(settings: LetheSettings, request, parent: Parent, outcome: Outcome) -> int:
    """Returns the version number MLflow assigned (or the one registered for this request before)."""
    return registry_for(settings).register_candidate(
        Candidate(
            request_id=request.id,
            request={**request.spec().body(), "requester": request.requester},
            delta_path=Path(outcome.delta),
            parent_version=parent.version,
            erased=list(outcome.erased),
            base_model=settings.base_model,
            base_sha256=outcome.base_sha256,
            params=outcome.params,
            metrics=outcome.metrics,
            gate_passed=outcome.gate_passed,
            gate_reasons=list(outcome.gate_reasons),
            report_dir=Path(outcome.report_dir),
            extra_files={name: Path(path) for name, path in outcome.extra_files.items()},
            revoked=revocations_of_lineage(settings, request),
        )
    )
