"""Crash recovery of the queue drainer (issue 6, "Crash recovery").

`lethe run` is a real subprocess on the embedded setup (Prefect's ephemeral API, SQLite ledger and
MLflow store under a temporary LETHE_HOME) with a tiny model built from config as the base. It is
killed with SIGKILL (its whole process group, the ephemeral Prefect server included) at the moment the
test chooses, then run again: the same request is resumed, and it ends with exactly one version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from registry.ledger import FAILED, PROMOTED, QUEUED, RUNNING, Ledger, RequestSpec
from registry.versions import CANDIDATE, PRODUCTION, TAG_REQUEST, ModelRegistry
from tests.servers import kill_group, wait_for

MODEL = "shapes-t2i"
STEPS = 40  # training steps of a request: long enough to be killed in the middle
CHECKPOINT_EVERY = 2


@pytest.fixture
def home(tmp_path):
    (tmp_path / "pass.yaml").write_text("name: test\nthresholds:\n  - metric: forget.gate.ua\n    min: 0.0\n")
    return tmp_path / "home"


def environment(home: Path, base: Path) -> dict:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LETHE_HOME": str(home),
        "LETHE_BASE_MODEL": str(base),
        "LETHE_WORLD": "shapes",
        "LETHE_SAMPLE_STEPS": "3",
        "LETHE_EVAL_FORGET_IMAGES": "2",
        "LETHE_EVAL_RETAIN_IMAGES": "2",
        "LETHE_CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
        "LETHE_POLICY": str(home.parent / "pass.yaml"),
        "LETHE_LINEAGE_WAIT_SECONDS": "20",
    }
    for name in ("LETHE_CONFIG", "PREFECT_API_URL", "PREFECT_HOME"):  # the embedded setup, under LETHE_HOME
        env.pop(name, None)
    return env


def lethe(home: Path, base: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=home.parent,
        env=environment(home, base),
        timeout=timeout,
    )


def submit(home, tiny_base, concept: str, request_id: str) -> None:
    """Queue a request for duge: a gradient method, with the checkpoints these tests kill and resume."""
    args = ("submit", "--concept", concept, "--requester", "alice", "--id", request_id, "--method", "duge")
    assert lethe(home, tiny_base, *args).returncode == 0


def drain(home: Path, base: Path, *extra: str) -> dict:
    result = lethe(home, base, "run", "--auto-approve", "--unlearn-steps", str(STEPS), "--json", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.index("{") :])


def start_drainer(home: Path, base: Path, argv: list[str], log: Path) -> subprocess.Popen:
    """A drainer in its own process group (so that one signal reaches its ephemeral Prefect server too)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=home.parent,
            env=environment(home, base),
            start_new_session=True,
        )


def stores(home: Path) -> tuple[Ledger, ModelRegistry]:
    home = home.resolve()
    return Ledger(f"sqlite:///{home / 'ledger.db'}"), ModelRegistry(
        f"sqlite:///{home / 'mlflow.db'}", MODEL, str(home / "artifacts")
    )


def versions_of(registry: ModelRegistry, request_id: str) -> list[int]:
    return sorted(
        int(v.version)
        for v in registry.client.search_model_versions(f"name='{MODEL}' and tags.`{TAG_REQUEST}`='{request_id}'")
    )


def kill_during_training(home: Path, base: Path, request_id: str, tmp_path: Path) -> int:
    """Start the drainer, SIGKILL it once the request's training has written a checkpoint; returns its step."""
    checkpoint = home / "requests" / request_id / "train" / "checkpoint.pt"
    log = tmp_path / "killed-run.log"
    process = start_drainer(
        home, base, [sys.executable, "-m", "flows.cli", "run", "--auto-approve", "--unlearn-steps", str(STEPS)], log
    )
    wait_for(
        checkpoint.is_file, process, log, "a training checkpoint", poll=0.05
    )  # kill soon after the first checkpoint
    kill_group(process)
    assert not (checkpoint.parent / "delta.safetensors").exists(), "killed after training ended: raise STEPS"
    step = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < step < STEPS
    return step


@pytest.mark.slow
def test_a_worker_killed_during_training_resumes_from_its_checkpoint(tiny_base, home, tmp_path):
    submit(home, tiny_base, "circle", "r1")
    ledger, registry = stores(home)

    killed_at = kill_during_training(home, tiny_base, "r1", tmp_path)
    assert ledger.get("r1").state == RUNNING  # the run is gone; the ledger still says running
    assert versions_of(registry, "r1") == []

    started = time.monotonic()
    payload = drain(home, tiny_base)
    [result] = payload["requests"]
    assert result["id"] == "r1" and result["state"] == PROMOTED, result
    assert result["resumed_from_step"] >= killed_at > 0  # training went on from the checkpoint, not from step 0
    summary = json.loads((home / "requests" / "r1" / "train" / "summary.json").read_text())
    assert summary["resumed_from_step"] == result["resumed_from_step"]
    assert not (home / "requests" / "r1" / "train" / "checkpoint.pt").exists()

    assert versions_of(registry, "r1") == [result["candidate_version"]]  # exactly one version
    assert registry.alias_version(PRODUCTION) == result["candidate_version"] == payload["production"]["version"]
    assert ledger.get("r1").state == PROMOTED
    trail = ledger.history("r1")
    claims = [h for h in trail if h["event"] == "state" and (h["from_state"], h["to_state"]) == (QUEUED, RUNNING)]
    resumes = [h for h in trail if h["event"] == "resumed"]
    assert len(claims) == 1 and len(resumes) == 1 and resumes[0]["actor"] == "continual-unlearning"
    assert trail.index(claims[0]) < trail.index(resumes[0]) < len(trail) - 1
    print(
        f"killed at step {killed_at}; resumed from step {result['resumed_from_step']}; "
        f"second run {time.monotonic() - started:.0f} s"
    )


# The drainer, with one change: it dies (SIGKILL, no cleanup) at the ledger write that follows the
# registration of a candidate, the narrowest gap between the registry and the ledger.
DIE_AFTER_REGISTRATION = """
import os, signal, sys
import flows.continual as continual
def record_gate(*args, **kwargs):  # the ledger write that follows the registration
    os.kill(os.getpid(), signal.SIGKILL)
continual.record_gate = record_gate
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""

# The drainer, with one change: it dies (SIGKILL) in the middle of the candidate's evaluation, after
# sampling has begun.
DIE_DURING_EVALUATION = """
import os, signal, sys
from unlearning.evaluation import evaluate as evaluation
real = evaluation.generate
def generate(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
evaluation.generate = generate
from flows.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_worker_killed_during_evaluation_does_not_train_again(tiny_base, home, tmp_path):
    """Training finished, evaluation was under way when the worker died: the next drain evaluates the
    delta it has, without training the request again (same delta, same summary, reused)."""
    submit(home, tiny_base, "circle", "r1")
    ledger, registry = stores(home)
    log = tmp_path / "killed-in-evaluation.log"
    process = start_drainer(
        home,
        tiny_base,
        [sys.executable, "-c", DIE_DURING_EVALUATION, "run", "--auto-approve", "--unlearn-steps", "4"],
        log,
    )
    assert process.wait(timeout=900) == -signal.SIGKILL, log.read_text()[-3000:]
    kill_group(process)
    train = home / "requests" / "r1" / "train"
    assert (train / "summary.json").is_file() and not (home / "requests" / "r1" / "outcome.json").exists()
    assert ledger.get("r1").state == RUNNING and versions_of(registry, "r1") == []
    trained = {name: (train / name).read_bytes() for name in ("summary.json", "delta.safetensors")}

    result = lethe(home, tiny_base, "run", "--auto-approve", "--unlearn-steps", "4", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    [outcome] = json.loads(result.stdout[result.stdout.index("{") :])["requests"]
    assert outcome["state"] == PROMOTED and outcome["reused_training"] is True, outcome
    assert {name: (train / name).read_bytes() for name in trained} == trained  # not retrained: same files
    assert versions_of(registry, "r1") == [outcome["candidate_version"]]


@pytest.mark.slow
def test_a_crash_between_registration_and_the_ledger_registers_one_version(tiny_base, home, tmp_path):
    submit(home, tiny_base, "circle", "r1")
    ledger, registry = stores(home)
    log = tmp_path / "crashed-run.log"
    process = start_drainer(
        home,
        tiny_base,
        [sys.executable, "-c", DIE_AFTER_REGISTRATION, "run", "--auto-approve", "--unlearn-steps", "4"],
        log,
    )
    assert process.wait(timeout=900) == -signal.SIGKILL, log.read_text()[-3000:]
    kill_group(process)  # its ephemeral Prefect server
    [registered] = versions_of(registry, "r1")
    assert ledger.get("r1").state == RUNNING and ledger.get("r1").candidate_version is None
    assert registry.alias_version(CANDIDATE) == registered

    result = lethe(home, tiny_base, "run", "--auto-approve", "--unlearn-steps", "4", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    [outcome] = json.loads(result.stdout[result.stdout.index("{") :])["requests"]
    assert outcome["state"] == PROMOTED and outcome["candidate_version"] == registered
    assert versions_of(registry, "r1") == [registered]
    assert registry.alias_version(PRODUCTION) == registered and registry.alias_version(CANDIDATE) is None
    assert ledger.get("r1").candidate_version == registered


@pytest.mark.slow
def test_a_request_that_fails_on_resume_is_marked_failed(tiny_base, home, tmp_path):
    """Resumed with other options, the checkpoint is refused: the request ends failed, with the reason,
    and the queue goes on to the next request."""
    submit(home, tiny_base, "circle", "r1")
    submit(home, tiny_base, "star", "r2")
    ledger, registry = stores(home)
    kill_during_training(home, tiny_base, "r1", tmp_path)

    result = lethe(home, tiny_base, "run", "--auto-approve", "--unlearn-steps", "3", "--max", "1", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    [outcome] = json.loads(result.stdout[result.stdout.index("{") :])["requests"]
    assert outcome["id"] == "r1" and outcome["state"] == FAILED
    request = ledger.get("r1")
    assert request.state == FAILED and "different configuration" in request.error
    assert versions_of(registry, "r1") == [] and ledger.get("r2").state == QUEUED


def test_a_request_stranded_again_and_again_is_failed_not_resumed_forever(ledger_url):
    ledger = Ledger(ledger_url)
    ledger.submit_many(
        [RequestSpec("circle", "alice", id="r1", method="duge"), RequestSpec("star", "alice", id="r2", method="duge")],
        lineage=MODEL,
    )
    assert ledger.resume_stranded(MODEL, actor="drainer") is None  # nothing is running
    assert ledger.claim_head(MODEL, actor="drainer").id == "r1"
    for _ in range(3):  # each drainer that finds it running is killed too
        assert ledger.resume_stranded(MODEL, actor="drainer").id == "r1"
    assert ledger.resume_stranded(MODEL, actor="drainer") is None
    request = ledger.get("r1")
    assert request.state == FAILED and "stopped while running 4 times" in request.error
    assert [h["event"] for h in ledger.history("r1")].count("resumed") == 3
    assert ledger.claim_head(MODEL, actor="drainer").id == "r2"  # the queue goes on


@pytest.mark.slow
def test_an_error_before_training_fails_the_request_instead_of_resuming_it_again_and_again(tiny_base, home):
    """The registry cannot be read (production_version fails after its retries): the request ends
    failed with the reason, and the drainer stops (it used to claim the same request forever)."""
    submit(home, tiny_base, "circle", "r1")
    env_uri = f"sqlite:///{home / 'ledger.db'}/not-a-folder/mlflow.db"  # a path under a file: every call fails
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--auto-approve", "--unlearn-steps", "2"],
        capture_output=True,
        text=True,
        cwd=home.parent,
        timeout=600,
        env={**environment(home, tiny_base), "LETHE_MLFLOW_TRACKING_URI": env_uri},
    )
    ledger, _ = stores(home)
    request = ledger.get("r1")
    assert request.state == FAILED and request.error, (result.stdout[-2000:], result.stderr[-2000:])
    assert [h["event"] for h in ledger.history("r1")].count("resumed") == 0


def _registry_and_candidate(tiny_base, tmp_path):
    from tests.test_registry import _candidate
    from tests.tiny_models import make_delta
    from unlearning.sampling import load_model

    pipe = load_model(tiny_base)
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    make_delta(pipe.unet, tmp_path / "d1.safetensors", seed=1, base_state=base_state)
    registry = ModelRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", MODEL, str(tmp_path / "artifacts"))
    return registry, _candidate("r1", tmp_path / "d1.safetensors", None, ["circle"], tiny_base)


@pytest.mark.slow
def test_registration_killed_part_way_is_completed_by_the_next_run_with_one_version(tiny_base, tmp_path, monkeypatch):
    """A kill is not an exception: no cleanup runs (KeyboardInterrupt stands in for the signal here).
    Killed after the version was created but before it was complete, the next registration deletes the
    half-registered version; killed before the `candidate` alias was set, it sets the alias."""
    registry, candidate = _registry_and_candidate(tiny_base, tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(registry.client, "set_model_version_tag", killed)
    with pytest.raises(KeyboardInterrupt):
        registry.register_candidate(candidate)
    monkeypatch.undo()
    [half] = versions_of(registry, "r1")
    assert registry.version_for_request("r1") is None

    monkeypatch.setattr(registry.client, "set_registered_model_alias", killed)
    with pytest.raises(KeyboardInterrupt):
        registry.register_candidate(candidate)
    monkeypatch.undo()
    [complete] = versions_of(registry, "r1")
    assert complete != half and registry.alias_version(CANDIDATE) is None

    assert registry.register_candidate(candidate) == complete
    assert versions_of(registry, "r1") == [complete] and registry.alias_version(CANDIDATE) == complete


@pytest.mark.slow
def test_a_drainer_killed_while_paused_for_approval_leaves_the_request_approvable(tiny_base, home, tmp_path):
    """No one will take an answer handed to the dead run (Prefect still shows it paused): `lethe approve`
    sees that the paused run's process is gone and decides directly; production moves once."""
    submit(home, tiny_base, "circle", "r1")
    ledger, registry = stores(home)
    log = tmp_path / "paused-run.log"
    process = start_drainer(home, tiny_base, [sys.executable, "-m", "flows.cli", "run", "--unlearn-steps", "2"], log)
    wait_for(lambda: ledger.get("r1").state == "awaiting-approval", process, log, "r1 awaiting approval")
    kill_group(process)
    candidate = ledger.get("r1").candidate_version

    started = time.monotonic()
    env = {"LETHE_APPROVERS": "bob"}
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "approve", "r1", "--approver", "bob", "--json"],
        capture_output=True,
        text=True,
        cwd=home.parent,
        env={**environment(home, tiny_base), **env},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["state"] == PROMOTED and time.monotonic() - started < 120
    assert ledger.get("r1").state == PROMOTED and registry.alias_version(PRODUCTION) == candidate
    assert versions_of(registry, "r1") == [candidate]
