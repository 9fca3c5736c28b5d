"""Revoke: remove one request's effect from the lineage and keep the rest (docs/design.md, "Registry and ledger").

`lethe revoke ID` (registry/governance.py `revoke`) records the revocation and queues the re-derivation:
every request promoted after the revoked one is replayed, in order, from the last version before it,
each a request of its own (same concept, synonyms, preserve set, method and options), unlearned,
gated against the base with the rebound set of the concepts that stay erased, and approved as usual.
A replay that is not the chain's head is `accepted` (the next one builds on it); `production` moves
only when the head is approved. Closed-form steps (continual-uce) re-solve from the base with the
lineage's terms, which no longer hold the revoked concept's: each replay takes seconds to train.

When the head is in production, `measure_revoked` checks that the revoked concept is back: the new
production draws it again, relative to the base, on the forget sets of the concept. It samples a whole
evaluation, so it is a task of its own under the GPU slot (flows/continual.py), never part of an answer:
the flow measures right after promoting the head, and the next drain measures any revocation completed
elsewhere (`lethe approve` answering directly).
"""

from __future__ import annotations

import time

from pipeline.claim import registry_for
from pipeline.evaluate import evaluate_model
from pipeline.evaluator import Evaluator
from pipeline.prepare import load_parent_model
from pipeline.settings import LetheSettings
from registry import governance
from registry.ledger import Ledger, Revocation
from unlearning.open_plan import LineageConcepts
from unlearning.sampling import load_model

MEASURED = "revocation-measured"


def revoke(settings: LetheSettings, request_id: str, *, approver: str, reason: str) -> dict:
    """Raises NotAllowed, UnknownRequest, RevocationRefused (nothing written)."""
    return governance.revoke(
        Ledger(settings.ledger_url),
        registry_for(settings),
        request_id,
        approver=approver,
        approvers=settings.approvers,
        reason=reason,
    )


def revocations_of_lineage(settings: LetheSettings, request=None) -> list[dict]:
    """The revocations a new version's card names: every completed one of the lineage, and the pending one a
    replay belongs to."""
    ledger = Ledger(settings.ledger_url)
    found = []
    for revocation in ledger.lineage_revocations(settings.model_name):
        revoked = ledger.get(revocation.request_id)
        if revocation.state == "completed" or (request is not None and request.revocation == revocation.id):
            found.append(
                {
                    "concept": revoked.concept,
                    "request_id": revoked.id,
                    "reason": revocation.reason,
                    "revocation": revocation.id,
                }
            )
    return found


def unmeasured_revocations(settings: LetheSettings) -> list[str]:
    """The completed revocations of the lineage whose revoked concept was not measured yet (approved from
    `lethe approve` directly, or a run stopped before measuring): the next drain measures them."""
    ledger = Ledger(settings.ledger_url)
    return [
        revocation.id
        for revocation in ledger.lineage_revocations(settings.model_name)
        if revocation.state == "completed"
        and not any(h["event"] == MEASURED for h in ledger.history(revocation.request_id))
    ]


def measure_revocation(settings: LetheSettings, revocation_id: str, *, actor: str) -> dict:
    """`measure_revoked` for a revocation named by id (the flow's task, under the GPU slot)."""
    return measure_revoked(settings, Ledger(settings.ledger_url).revocation(revocation_id), actor=actor)


def measure_revoked(settings: LetheSettings, revocation: Revocation, *, actor: str) -> dict:
    """Judge production on the revoked concept: it should be drawn again as the base draws it. Writes a
    report and a ledger event; returns the numbers (detection, base detection, relative, per set)."""
    ledger = Ledger(settings.ledger_url)
    concept = ledger.get(revocation.request_id).concept
    version = registry_for(settings).alias_version("production")
    source = settings.base_model if version is None else f"models:/{settings.model_name}/{version}"
    model = load_parent_model(settings, source)
    others = tuple(c for c in model.erased if c != concept)
    evaluator = Evaluator.from_settings(settings, gate=False, concepts=LineageConcepts(concept, erased=others))
    report_dir = settings.home / "reports" / f"{revocation.id}-{time.strftime('%Y%m%d-%H%M%S')}"
    _, payload = evaluate_model(
        evaluator,
        model.pipe,
        load_model(model.base_model),
        base_sha256=model.base_sha256,
        target=concept,
        erased=others,
        report_dir=report_dir,
        title=f"Revocation {revocation.id}: is {concept} back?",
    )
    sets = {}
    for kind, entry in payload["checks"]["forget"].items():
        drawn, base_drawn = 1 - entry["ua"], 1 - entry["base_ua"]
        sets[kind] = {
            "detection": drawn,
            "base_detection": base_drawn,
            "n": entry["n"],
            "relative": drawn / base_drawn if base_drawn else 1.0,
        }
    detection = sum(s["detection"] * s["n"] for s in sets.values()) / sum(s["n"] for s in sets.values())
    base_detection = sum(s["base_detection"] * s["n"] for s in sets.values()) / sum(s["n"] for s in sets.values())
    result = {
        "revocation": revocation.id,
        "concept": concept,
        "production_version": version,
        "sets": sets,
        "detection": detection,
        "base_detection": base_detection,
        "relative": detection / base_detection if base_detection else 1.0,
        "report": str(report_dir / "report.html"),
    }
    ledger.record_event(MEASURED, actor=actor, detail=result, request_id=revocation.request_id)
    return result
