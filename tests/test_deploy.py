"""The production path: deploy/ files, `lethe serve`, and deploy/prefect.yaml on a real Prefect server.

The files are checked for what a typo would break (docker and kubernetes are not available here):
schedules that agree with the settings, a job template whose placeholders are all declared, a compose
file whose services, pools and deployments refer to each other. The slow tests start a real
`prefect server` on 127.0.0.1 (tests/servers.py), then either `lethe serve` or a process worker after
`prefect deploy`, and follow one request from `lethe submit` (its event triggers the drainer) to
promotion. Every process they start is stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests import servers

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
LETHE = servers.BIN / "lethe"
PREFECT = servers.BIN / "prefect"


def _prefect_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())


def _deployment(name: str) -> dict:
    [found] = [d for d in _prefect_yaml()["deployments"] if d["name"] == name]
    return found


# ---------------------------------------------------------------- the files
def test_prefect_yaml_agrees_with_the_settings_and_the_flows():
    from prefect.flows import Flow, load_flow_from_entrypoint

    from flows.events import REQUEST_SUBMITTED
    from pipeline.settings import LetheSettings

    defaults = {name: field.default for name, field in LetheSettings.model_fields.items()}
    config = _prefect_yaml()
    assert config["pull"] == [] and config["build"] is None  # the flows come from the installed package
    for name in ("drain-gpu", "drain-cpu"):
        drain = _deployment(name)
        assert [(s["cron"], s["timezone"]) for s in drain["schedules"]] == [
            (defaults["drain_cron"], defaults["schedule_timezone"])
        ]
        [trigger] = drain["triggers"]
        assert trigger["expect"] == [REQUEST_SUBMITTED] and trigger["match"]["prefect.resource.id"] == "lethe.lineage.*"
        assert drain["parameters"] == {"auto_approve": False}  # production: a person approves
    assert [s["cron"] for s in _deployment("audit")["schedules"]] == [defaults["audit_cron"]]
    assert {d["work_pool"]["name"] for d in config["deployments"]} == {"lethe-gpu", "lethe-cpu"}
    flow_names = {}
    for deployment in config["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
        assert isinstance(flow, Flow)
        flow_names[deployment["name"]] = flow.name
    assert flow_names == {
        "drain-gpu": "continual-unlearning",
        "drain-cpu": "continual-unlearning",
        "audit": "erosion-audit",
    }


def test_the_kubernetes_job_template_requests_a_gpu_and_declares_every_placeholder():
    template = json.loads((DEPLOY / "k8s-gpu-job-template.json").read_text())
    manifest = template["job_configuration"]["job_manifest"]
    [container] = manifest["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    variables = template["variables"]["properties"]
    assert variables["gpu_count"]["default"] == 1 and variables["gpu_count"]["type"] == "integer"
    assert container["envFrom"] == [{"secretRef": {"name": "{{ env_secret }}"}}]
    used = set(re.findall(r"\{\{\s*([a-z_]+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used - set(variables) == set(), "placeholders without a variable"
    assert _deployment("drain-gpu")["work_pool"]["job_variables"]["gpu_count"] == 1


def test_the_compose_stack_is_wired_together():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "worker"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if "build" in service:  # the context is relative to deploy/, the dockerfile to the context
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == ROOT and (context / service["build"]["dockerfile"]).is_file()
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg://" in mlflow and "--artifacts-destination=s3://lethe/" in mlflow
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "prefect server start" in " ".join(services["prefect-server"]["command"])
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://"
    )
    # the worker serves the pool that drain-cpu and audit deploy to; the deploy step names them
    worker = services["worker"]["command"]
    assert (
        worker[worker.index("--pool") + 1]
        == _deployment("drain-cpu")["work_pool"]["name"]
        == _deployment("audit")["work_pool"]["name"]
    )
    deploy_step = services["deploy"]["command"][-1]
    assert "--name drain-cpu --name audit" in deploy_step and "deploy/prefect.yaml" in deploy_step
    # every database the URLs name exists: POSTGRES_DB, or created by the init script
    init_sql = (DEPLOY / "postgres-init.sql").read_text()
    created = {services["postgres"]["environment"]["POSTGRES_DB"], *re.findall(r"CREATE DATABASE (\w+)", init_sql)}
    urls = [
        services["worker"]["environment"]["LETHE_LEDGER_URL"],
        mlflow,
        services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"],
    ]
    assert (
        {re.search(r"@postgres:5432/(\w+)", url).group(1) for url in urls} == {"lethe", "mlflow", "prefect"} <= created
    )
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert [line for line in dockerfile.splitlines() if line.startswith("FROM")] == ["FROM python:3.11-slim"]
    assert "pip install ." in dockerfile and 'CMD ["prefect", "worker", "start"' in dockerfile


def _cli_env(tmp_path: Path, api_url: str | None) -> dict:
    """A `lethe` subprocess: Prefect reads its settings at import, so these cannot be patched in-process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LETHE_"))}
    env.update(
        servers.prefect_env(tmp_path / "prefect-home"), LETHE_HOME=str(tmp_path / "home")
    )  # no profile names a server
    return {**env, "PREFECT_API_URL": api_url} if api_url else env


def test_serve_without_a_prefect_server_is_refused(tmp_path):
    result = subprocess.run([LETHE, "serve"], env=_cli_env(tmp_path, None), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "PREFECT_API_URL" in result.stderr


def test_submit_is_not_failed_by_an_unreachable_prefect_api(tmp_path):
    """The ledger write is what counts: the event is sent after it, and a failed send is a warning."""
    from registry.ledger import Ledger

    dead_api = f"http://127.0.0.1:{servers.free_port()}/api"  # nothing listens there
    started = time.monotonic()
    result = subprocess.run(
        [LETHE, "submit", "--concept", "circle", "--requester", "alice", "--id", "r1", "--json"],
        env=_cli_env(tmp_path, dead_api),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["event"].startswith("not sent") and "warning" in result.stderr
    assert time.monotonic() - started < 60
    assert Ledger(f"sqlite:///{tmp_path / 'home' / 'ledger.db'}").get("r1").state == "queued"

    embedded = subprocess.run(
        [LETHE, "submit", "--concept", "star", "--requester", "alice", "--json"],
        env=_cli_env(tmp_path, None),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert embedded.returncode == 0 and json.loads(embedded.stdout)["event"].startswith("skipped")


def test_audit_with_a_malformed_policy_is_refused(monkeypatch, tmp_path, capsys):
    from flows.cli import main

    (tmp_path / "bad.yaml").write_text("thresholds:\n  - metric: drift\n")  # no bound
    monkeypatch.setenv("LETHE_POLICY", str(tmp_path / "bad.yaml"))
    monkeypatch.setenv("LETHE_HOME", str(tmp_path / "home"))
    assert main(["audit"]) == 2
    assert "needs 'min' or 'max'" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()  # refused before anything was written


# ---------------------------------------------------------------- on a real Prefect server
@pytest.fixture(scope="module")
def prefect_server_api(tmp_path_factory):
    """A real Prefect server (not conftest's test harness): deployments and workers need one."""
    with servers.prefect_server(tmp_path_factory.mktemp("prefect")) as api_url:
        yield api_url


def _environment(api_url: str, tmp_path: Path, tiny_base: Path, model_name: str) -> dict:
    """What every process of one test gets: the server, a fresh LETHE_HOME, the tiny model, a fast sampler."""
    policy = tmp_path / "pass.yaml"
    policy.write_text("name: test\nthresholds:\n  - metric: forget.gate.ua\n    min: 0.0\n")
    return {
        **os.environ,
        **servers.prefect_env(tmp_path / "prefect-client"),
        "PREFECT_API_URL": api_url,
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "LETHE_HOME": str(tmp_path / "home"),
        "LETHE_BASE_MODEL": str(tiny_base),
        "LETHE_WORLD": "shapes",
        "LETHE_SAMPLE_STEPS": "3",
        "LETHE_MODEL_NAME": model_name,
        "LETHE_POLICY": str(policy),
        "LETHE_APPROVERS": "bob",
        "HF_HUB_OFFLINE": "1",
        "LETHE_UNLEARN_STEPS": "1",
        "LETHE_EVAL_FORGET_IMAGES": "1",
        "LETHE_EVAL_RETAIN_IMAGES": "1",  # a triggered run takes no parameters: settings keep it short
    }


def _run(env: dict, *command, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in command], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} -> {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


class Background:
    """A long-running command in its own process group, its output in a log file, stopped by PID."""

    def __init__(self, command: list, env: dict, log: Path, cwd: Path):
        self.log_path = log
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            [str(c) for c in command],
            env=env,
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        servers.stop_group(self.process, grace=30)
        self.log.close()


def _wait(what: str, check, timeout: float, background: Background | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := check():
            return value
        if background is not None and background.process.poll() is not None:
            break
        time.sleep(1)
    tail = background.output()[-4000:] if background is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _client(api_url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


def _flow_runs_of(api_url: str, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _client(api_url) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _submit_and_approve(env: dict, tmp_path: Path, api_url: str, deployment_id, runner: Background) -> None:
    """`lethe submit` → the trigger runs the deployment → awaiting approval → `lethe approve` → promoted."""
    from registry.ledger import Ledger

    submitted = json.loads(
        _run(
            env, LETHE, "submit", "--concept", "circle", "--requester", "alice", "--id", "r1", "--json", cwd=tmp_path
        ).stdout
    )
    assert submitted["event"] == "sent"
    ledger = Ledger(f"sqlite:///{tmp_path / 'home' / 'ledger.db'}")
    _wait("the triggered drainer to reach approval", lambda: ledger.get("r1").state == "awaiting-approval", 420, runner)
    [waiting] = [h["detail"]["flow_run_id"] for h in ledger.history("r1") if h["to_state"] == "awaiting-approval"]
    with _client(api_url) as client:  # the paused run is the process-request subflow of a drainer run
        subflow = client.read_flow_run(waiting)
        drainer_id = str(client.read_task_run(subflow.parent_task_run_id).flow_run_id)
    runs = {str(run.id): run for run in _flow_runs_of(api_url, deployment_id)}
    assert drainer_id in runs, "the request was not processed by the deployment's run"
    created_by = runs[drainer_id].created_by
    assert created_by is not None and created_by.type == "AUTOMATION", (
        f"not started by the submit trigger: {created_by}"
    )

    _run(env, LETHE, "approve", "r1", "--approver", "bob", "--comment", "checked", cwd=tmp_path, timeout=600)
    assert ledger.get("r1").state == "promoted"
    _wait(
        "the drainer run to complete",
        lambda: {str(r.id): r for r in _flow_runs_of(api_url, deployment_id)}[drainer_id].state.is_completed(),
        120,
        runner,
    )


@pytest.mark.slow
def test_lethe_serve_drains_on_the_submit_event(prefect_server_api, tiny_base, tmp_path):
    """`lethe serve` registers the drainer (cron + trigger) and the audit (cron); a submit runs the drainer."""
    model = "served-t2i"
    env = _environment(prefect_server_api, tmp_path, tiny_base, model)
    serving = Background([LETHE, "serve", "--json"], env, tmp_path / "serve.log", cwd=tmp_path)
    try:

        def registered():
            # `lethe serve` registers the drainer, the audit and the automation one after another: wait
            # for all three, not the first (CI once read the audit a moment before it existed).
            with _client(prefect_server_api) as client:
                try:
                    drain = client.read_deployment_by_name(f"continual-unlearning/drain-{model}")
                    audit = client.read_deployment_by_name(f"erosion-audit/audit-{model}")
                    automations = client.read_automations_by_name(f"drain {model} on submit")
                except Exception:  # noqa: BLE001 - not there yet
                    return None
            return (drain, audit, automations) if automations else None

        drain, audit, automations = _wait("lethe serve to register its deployments", registered, 180, serving)
        assert [s.schedule.cron for s in drain.schedules] == ["*/15 * * * *"]
        assert [s.schedule.cron for s in audit.schedules] == ["0 3 * * *"]
        [automation] = automations
        assert automation.trigger.expect == {"lethe.request.submitted"}
        assert automation.trigger.match.root == {"prefect.resource.id": f"lethe.lineage.{model}"}
        _submit_and_approve(env, tmp_path, prefect_server_api, drain.id, serving)
    finally:
        serving.stop()


@pytest.mark.slow
def test_prefect_yaml_deploys_and_a_process_worker_completes_a_request(prefect_server_api, tiny_base, tmp_path):
    """Both pools (the Kubernetes one with deploy/k8s-gpu-job-template.json, accepted by the server but
    never polled here), `prefect deploy --all` with deploy/prefect.yaml, and a process worker on lethe-cpu."""
    env = _environment(prefect_server_api, tmp_path, tiny_base, "deployed-t2i")
    _run(env, PREFECT, "work-pool", "create", "lethe-cpu", "--type", "process")
    _run(
        env,
        PREFECT,
        "work-pool",
        "create",
        "lethe-gpu",
        "--type",
        "kubernetes",
        "--base-job-template",
        DEPLOY / "k8s-gpu-job-template.json",
    )
    _run(env, PREFECT, "--no-prompt", "deploy", "--prefect-file", DEPLOY / "prefect.yaml", "--all")
    with _client(prefect_server_api) as client:
        gpu_pool = client.read_work_pool("lethe-gpu")
        drain = client.read_deployment_by_name("continual-unlearning/drain-cpu")
        gpu_drain = client.read_deployment_by_name("continual-unlearning/drain-gpu")
    [container] = gpu_pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert gpu_drain.work_pool_name == "lethe-gpu" and gpu_drain.job_variables == {"gpu_count": 1}
    assert drain.entrypoint == "flows.continual.continual_unlearning" and drain.pull_steps == []

    worker = Background(
        [PREFECT, "worker", "start", "--pool", "lethe-cpu", "--type", "process"],
        env,
        tmp_path / "worker.log",
        cwd=tmp_path,
    )
    try:
        _submit_and_approve(env, tmp_path, prefect_server_api, drain.id, worker)
    finally:
        worker.stop()
