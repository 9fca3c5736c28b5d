"""`lethe serve`: the production path without work pools — this process serves the deployments.

    drain-<model>  continual-unlearning on `drain_cron`, and on every `lethe.request.submitted` of its
                   lineage (a deployment trigger: Prefect creates the automation when serving starts)
    audit-<model>  erosion-audit on `audit_cron`

Runs execute as subprocesses of this process; it needs a Prefect server (PREFECT_API_URL), where the
schedules, the trigger's automation and the submit events meet. deploy/prefect.yaml describes the same
deployments for workers in work pools.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.audit import erosion_audit
from flows.continual import continual_unlearning
from flows.events import REQUEST_SUBMITTED, lineage_resource_id
from pipeline.settings import LetheSettings


def submitted_trigger(model_name: str) -> DeploymentEventTrigger:
    """Run the drainer on every request submitted to this lineage (extra runs wait on the lineage limit)."""
    return DeploymentEventTrigger(
        name=f"drain {model_name} on submit",
        expect={REQUEST_SUBMITTED},
        match={"prefect.resource.id": lineage_resource_id(model_name)},
    )


def deployments(settings: LetheSettings) -> list[RunnerDeployment]:
    # Module paths, not file paths: runs import the installed package, whatever the working directory.
    common = {"entrypoint_type": EntrypointType.MODULE_PATH, "tags": ["lethe", settings.model_name]}
    drain = continual_unlearning.to_deployment(
        name=f"drain-{settings.model_name}",
        schedule=Cron(settings.drain_cron, timezone=settings.schedule_timezone),
        triggers=[submitted_trigger(settings.model_name)],
        description=f"Drain the request queue of {settings.model_name}",
        **common,
    )
    audit = erosion_audit.to_deployment(
        name=f"audit-{settings.model_name}",
        schedule=Cron(settings.audit_cron, timezone=settings.schedule_timezone),
        description=f"Erosion audit of {settings.model_name}@production",
        **common,
    )
    return [drain, audit]


def describe(served: list[RunnerDeployment]) -> list[dict]:
    """What `lethe serve` serves, as plain values (printed at start-up)."""
    return [
        {
            "deployment": f"{d.flow_name}/{d.name}",
            "entrypoint": d.entrypoint,
            "schedules": [s.schedule.cron for s in d.schedules],
            "triggers": [sorted(t.expect) for t in d.triggers],
        }
        for d in served
    ]


def serve_deployments(served: list[RunnerDeployment], limit: int | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM pauses the schedules on the way out)."""
    serve(*served, limit=limit, print_starting_message=False)
