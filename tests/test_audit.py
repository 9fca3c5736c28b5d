"""The erosion audit on Prefect's test harness: a tiny model built from config as the base, the real
ledger and MLflow store under a temporary LETHE_HOME, and a production version registered and
promoted the way governance does it (the delta stands in for an unlearning step).

The policy is the audit's tightest sensible one: production must give the base's images on every
retained prompt (`retention.distance max 0`). A zero delta meets it exactly; a real change of the
weights (attn2 K/V perturbed) must be caught, and the failure must reach the event, the version's
tags and the ledger.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from registry.ledger import Ledger
from registry.versions import PRODUCTION, Candidate, ModelRegistry
from tests.tiny_models import make_delta
from unlearning.sampling import model_identity


@pytest.fixture
def lethe_home(tmp_path, monkeypatch, tiny_base):
    monkeypatch.setenv("LETHE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LETHE_BASE_MODEL", str(tiny_base))
    monkeypatch.setenv("LETHE_WORLD", "shapes")  # a tiny model judged as a shapes-world model
    monkeypatch.setenv("LETHE_SAMPLE_STEPS", "3")
    monkeypatch.setenv("LETHE_EVAL_FORGET_IMAGES", "2")
    monkeypatch.setenv("LETHE_EVAL_RETAIN_IMAGES", "2")
    monkeypatch.setenv("LETHE_MODEL_NAME", f"audit-{tmp_path.name}"[:60])
    policy = tmp_path / "audit-policy.yaml"
    policy.write_text(
        "name: no-erosion\nthresholds:\n"
        "  - metric: retention.distance\n    max: 0.0\n"
        "  - metric: forget.gate.ua\n    min: 0.9\n"
    )  # a request's check: not applied by an audit
    monkeypatch.setenv("LETHE_POLICY", str(policy))
    monkeypatch.delenv("LETHE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    from pipeline.settings import load_settings

    return load_settings()


def _production(settings, tiny_base: Path, work: Path, *, scale: float) -> int:
    """Register a version erasing 'circle' whose delta is attn2 K/V noise of `scale`, and promote it."""
    from diffusers import StableDiffusionPipeline

    registry = ModelRegistry(settings.mlflow_tracking_uri, settings.model_name, settings.artifact_root)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base)
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    make_delta(pipe.unet, work / "delta.safetensors", seed=1, scale=scale, base_state=base_state)
    _, base_sha = model_identity(str(tiny_base))
    version = registry.register_candidate(
        Candidate(
            request_id="r1",
            request={"concept": "circle", "requester": "alice"},
            delta_path=work / "delta.safetensors",
            parent_version=None,
            erased=["circle"],
            base_model=str(tiny_base),
            base_sha256=base_sha,
            params={"method": "test-perturbation", "steps": 0},
            metrics={},
            gate_passed=True,
            gate_reasons=[],
        )
    )
    registry.promote(version, expected_production=None, approval={"approver": "bob", "comment": "test"})
    assert registry.alias_version(PRODUCTION) == version
    return version


def _audit_events(since: float) -> list:
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    query = EventFilter(
        event=EventNameFilter(name=["lethe.audit.failed"]),
        occurred=EventOccurredFilter(since=datetime.fromtimestamp(since - 5, tz=UTC)),
    )
    with get_client(sync_client=True) as client:
        return client.read_events(filter=query, limit=50).events  # the server refuses the default (100)


def _wait_for_audit_events(since: float, timeout: float = 60) -> list:
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    deadline = time.time() + timeout
    while not (found := _audit_events(since)) and time.time() < deadline:
        time.sleep(1)
    return found


@pytest.mark.slow
def test_an_unchanged_production_passes_its_audit(prefect_api, lethe_home, tiny_base, tmp_path):
    from flows.audit import erosion_audit

    version = _production(lethe_home, tiny_base, tmp_path, scale=0.0)

    result = erosion_audit()

    assert result["state"] == "passed" and result["version"] == version and result["erased"] == ["circle"]
    assert result["metrics"]["retention.distance"] == 0.0
    assert "rebound.circle.ua" in result["metrics"]  # every erased concept is re-measured
    assert [c["metric"] for c in result["checks"]] == ["retention.distance"]  # forget.* is a request's check
    report = json.loads(Path(result["report_json"]).read_text())
    assert report["state"] == "passed" and Path(result["report_html"]).is_file()
    assert Path(result["report_dir"]).parent == lethe_home.home / "reports"
    registry = ModelRegistry(lethe_home.mlflow_tracking_uri, lethe_home.model_name)
    assert registry.version_tags(version)["lethe.audit"] == "passed"
    [event] = [e for e in Ledger(lethe_home.ledger_url).history() if e["event"].startswith("audit")]
    assert event["event"] == "audit-passed" and event["detail"]["version"] == version


@pytest.mark.slow
def test_an_eroded_production_fails_and_is_marked(prefect_api, lethe_home, tiny_base, tmp_path, monkeypatch, capsys):
    """Through `lethe audit --json` (in-process, the harness's API): exit 1, and every mark is made."""
    from flows.cli import main

    for name, value in {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }.items():
        monkeypatch.setenv(name, value)  # what the CLI would set for good, restored after the test
    version = _production(lethe_home, tiny_base, tmp_path, scale=0.05)
    started = time.time()
    capsys.readouterr()

    assert main(["audit", "--json"]) == 1
    result = json.loads(capsys.readouterr().out)

    assert result["state"] == "failed" and not result["passed"] and result["version"] == version
    assert any(reason.startswith("retention.distance") for reason in result["reasons"])
    assert result["metrics"]["retention.distance"] > 0
    tags = ModelRegistry(lethe_home.mlflow_tracking_uri, lethe_home.model_name).version_tags(version)
    assert tags["lethe.audit"] == "failed" and "retention.distance" in tags["lethe.audit_reasons"]
    assert tags["lethe.audit_report"] == result["report_html"]
    [event] = [e for e in Ledger(lethe_home.ledger_url).history() if e["event"].startswith("audit")]
    assert event["event"] == "audit-failed" and event["actor"] == "erosion-audit"
    assert event["detail"]["version"] == version and event["detail"]["reasons"] == result["reasons"]
    events = [e for e in _wait_for_audit_events(started) if e.resource.id == f"lethe.lineage.{lethe_home.model_name}"]
    assert len(events) == 1, "no lethe.audit.failed event reached the Prefect API"
    assert events[0].payload["version"] == version and events[0].resource["lethe.version"] == str(version)


def test_nothing_to_audit_without_production(prefect_api, lethe_home):
    from flows.audit import erosion_audit

    assert erosion_audit() == {
        "model_name": lethe_home.model_name,
        "version": None,
        "state": "nothing-to-audit",
        "passed": True,
    }
