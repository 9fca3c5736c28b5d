"""Claim: which request a drainer works on next, and the production version it starts from."""

from __future__ import annotations

from pipeline.settings import LetheSettings
from pipeline.values import Parent
from registry import governance
from registry.ledger import ACCEPTED, Ledger, RevocationRefused
from registry.requests import Request
from registry.versions import PRODUCTION, ModelRegistry


def registry_for(settings: LetheSettings) -> ModelRegistry:
    return ModelRegistry(settings.mlflow_tracking_uri, settings.model_name, settings.artifact_root)


def claim_next(settings: LetheSettings, *, actor: str) -> Request | None:
    """A request a stopped run left running (resumed, or failed after too many resumes), else the head of
    the lineage's queue moved to `running`; None when there is nothing to do. Only the holder of the
    lineage (flows/concurrency.py) calls this.

    First, decisions a crash left half-done between the ledger and the registry (a `promoting` request, a
    revocation whose alias move was cut short) are finished (registry/governance.py `finish_interrupted`):
    their outcome is the next request's parent."""
    ledger = Ledger(settings.ledger_url)
    if governance.interrupted(ledger, settings.model_name):  # the registry is opened only when there is work
        governance.finish_interrupted(ledger, registry_for(settings), settings.model_name, actor=actor)
    if (stranded := ledger.resume_stranded(settings.model_name, actor=actor)) is not None:
        return stranded
    return ledger.claim_head(settings.model_name, actor=actor)


def parent_for(settings: LetheSettings, request) -> Parent:
    """The version a request starts from: production for a request; for a revocation's replay, the last
    version before the revoked request (the first replay) or the previous replay's accepted candidate.

    Raises:
        RevocationRefused: the previous replay of the chain was not accepted (the chain cannot go on).
    """
    if not request.revocation:
        return production_parent(settings)
    ledger = Ledger(settings.ledger_url)
    revocation = ledger.revocation(request.revocation)
    index = revocation.replays.index(request.id)
    if index == 0:
        version = revocation.parent_version
    else:
        previous = ledger.get(revocation.replays[index - 1])
        if previous.state != ACCEPTED:
            raise RevocationRefused(f"{request.id} builds on {previous.id}, which is {previous.state}, not accepted")
        version = previous.candidate_version
    return Parent(version=version, erased=tuple(registry_for(settings).erased_in(version)))


def production_parent(settings: LetheSettings) -> Parent:
    """What `production` points at now (None: the base) and the concepts it erased."""
    registry = registry_for(settings)
    version = registry.alias_version(PRODUCTION)
    return Parent(version=version, erased=tuple(registry.erased_in(version)))
