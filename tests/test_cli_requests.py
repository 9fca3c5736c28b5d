"""`lethe submit / status / approve / reject / rollback / export / history` as a user runs them.

Candidates are registered through the registry API (the flow that produces them is the
orchestration issue's); everything a person types goes through the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from registry.ledger import AWAITING_APPROVAL, Ledger
from registry.versions import ModelRegistry
from tests.test_registry import _candidate
from tests.tiny_models import build_tiny_base, make_delta

MODEL = "shapes-t2i"


def lethe(cwd, *args, stdin=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LETHE_APPROVERS": "bob,carol", "LETHE_HOME": str(cwd / ".lethe")}
    env.pop("LETHE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        input=stdin,
    )


def ledger_snapshot(home):
    ledger = Ledger(f"sqlite:///{(home / 'ledger.db').resolve()}")
    return [r.as_dict() for r in ledger.requests()], ledger.history()


def assert_refused(result):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lethe"), result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("--concept", "", "--requester", "alice"),
        ("--concept", "x" * 10_000, "--requester", "alice"),
        ("--concept", "star\x07", "--requester", "alice"),
        ("--concept", "star", "--requester", "alice", "--id", "../../etc/passwd"),
        ("--concept", "star", "--requester", "alice", "--id", "a\\b"),
        ("--concept", "star", "--requester", "alice", "--method", "teleport"),
        ("--concept", "star", "--requester", "alice", "--anchor", "star"),
        ("--concept", "circle", "--requester", "bob"),  # conflicts: circle is queued already
        ("--concept", "star", "--requester", "alice", "--id", "r1"),  # duplicate id
        ("-f", "missing.yaml"),
        ("-f", "bad.yaml"),
        ("-f", "half-bad.yaml"),
    ],
    ids=[
        "empty",
        "10000-chars",
        "control-char",
        "path-id",
        "backslash-id",
        "unknown-method",
        "anchor-is-concept",
        "conflict",
        "duplicate-id",
        "missing-file",
        "malformed-yaml",
        "one-bad-entry",
    ],
)
def test_bad_submissions_are_refused_and_change_nothing(tmp_path, args):
    assert lethe(tmp_path, "submit", "--concept", "circle", "--requester", "alice", "--id", "r1").returncode == 0
    (tmp_path / "bad.yaml").write_text("- concept: [unclosed\n")
    (tmp_path / "half-bad.yaml").write_text("- {concept: star, requester: alice}\n- {concept: '', requester: bob}\n")
    before = ledger_snapshot(tmp_path / ".lethe")
    assert_refused(lethe(tmp_path, "submit", *args))
    assert ledger_snapshot(tmp_path / ".lethe") == before


def test_submit_from_yaml_prints_ids_in_queue_order(tmp_path):
    (tmp_path / "requests.yaml").write_text(
        "requests:\n"
        "  - {concept: circle, requester: alice, synonyms: [disc], preserve: [ring], id: takedown-1}\n"
        "  - {concept: striped, requester: dan, reason: 'DMCA #42', id: takedown-2}\n"
    )
    result = lethe(tmp_path, "submit", "-f", "requests.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["takedown-1", "takedown-2"]
    requests, _ = ledger_snapshot(tmp_path / ".lethe")
    assert [(r["seq"], r["synonyms"]) for r in requests] == [(1, ["disc"]), (2, [])]


@pytest.mark.slow
def test_governance_through_the_cli(tmp_path):
    home = tmp_path / ".lethe"
    assert lethe(tmp_path, "submit", "--concept", "circle", "--requester", "alice", "--id", "r1").returncode == 0

    # What the flow will do: claim, unlearn (here: a perturbation), register, await approval.
    from diffusers import StableDiffusionPipeline

    base = build_tiny_base(tmp_path / "tiny-sd")
    ledger = Ledger(f"sqlite:///{(home / 'ledger.db').resolve()}")
    registry = ModelRegistry(f"sqlite:///{(home / 'mlflow.db').resolve()}", MODEL, str((home / "artifacts").resolve()))
    ledger.claim_head(MODEL, actor="flow")
    pipe = StableDiffusionPipeline.from_pretrained(base)
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    make_delta(pipe.unet, tmp_path / "d1.safetensors", seed=1, base_state=base_state)
    version = registry.register_candidate(_candidate("r1", tmp_path / "d1.safetensors", None, ["circle"], base))
    ledger.transition("r1", AWAITING_APPROVAL, actor="flow", candidate_version=version, parent_version=None)

    before = ledger_snapshot(home)
    assert_refused(lethe(tmp_path, "approve", "r1", "--approver", "alice"))  # on no list, and the requester
    assert_refused(lethe(tmp_path, "approve", "r1", "--approver", "eve"))
    assert_refused(lethe(tmp_path, "reject", "r1", "--approver", "eve", "--reason", "no"))
    assert_refused(lethe(tmp_path, "rollback", "--to", str(version), "--approver", "bob"))  # never approved
    assert ledger_snapshot(home) == before
    assert registry.alias_version("production") is None
    assert "lethe.approval" not in registry.version_tags(version)

    approved = lethe(tmp_path, "approve", "r1", "--approver", "bob", "--comment", "grids look clean", "--json")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["production_version"] == version

    status = json.loads(lethe(tmp_path, "status", "--json").stdout)
    assert status["production"] == {"version": version, "erased": ["circle"]}
    assert {k: status["requests"][0][k] for k in ("id", "seq", "concept", "state", "candidate_version")} == {
        "id": "r1",
        "seq": 1,
        "concept": "circle",
        "state": "promoted",
        "candidate_version": version,
    }

    exported = lethe(tmp_path, "export", str(version), str(tmp_path / "exported"))
    assert exported.returncode == 0, exported.stderr
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "exported")
    for key, value in pipe.unet.state_dict().items():
        assert reloaded.unet.state_dict()[key].equal(value), key
    assert_refused(lethe(tmp_path, "export", str(version), str(tmp_path / "exported")))  # not empty

    history = json.loads(lethe(tmp_path, "history", "--json").stdout)["history"]
    assert [(h["to_state"], h["actor"]) for h in history] == [
        ("queued", "alice"),
        ("running", "flow"),
        ("awaiting-approval", "flow"),
        ("promoting", "bob"),  # the ledger takes the approval first; the alias moves after
        ("promoted", "bob"),
    ]
