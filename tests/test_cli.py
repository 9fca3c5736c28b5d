"""The `lethe` command line as a user runs it: a real subprocess, real files."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image


def lethe(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def assert_one_line_error(result):
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lethe"), result.stderr


def test_help_lists_the_commands():
    result = lethe("--help")
    assert result.returncode == 0
    for command in ("generate", "world", "status"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("generate", "--prompt", "a red circle", "--out", "x.png", "--bogus"),
        ("frobnicate",),
        ("generate", "--out", "x.png"),
        ("generate", "--prompt", "   ", "--out", "x.png"),
        ("generate", "--prompt", "a red circle", "--out", "missing-folder/x.png"),
        ("generate", "--prompt", "a red circle", "--out", "x.jpg"),
        ("generate", "--prompt", "a red circle " * 12, "--out", "x.png"),
    ],
    ids=[
        "unknown-option",
        "unknown-command",
        "missing-prompt",
        "empty-prompt",
        "missing-folder",
        "not-png",
        "too-long",
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args):
    result = lethe(*args, cwd=tmp_path)
    assert_one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root); covered by the missing-folder case")
        result = lethe("generate", "--prompt", "a red circle", "--out", str(locked / "x.png"))
        assert_one_line_error(result)
    finally:
        locked.chmod(0o700)


def test_generate_writes_a_grid_and_reports_json(tmp_path):
    out = tmp_path / "grid.png"
    result = lethe(
        "generate",
        "--prompt",
        "a purple gradient ring",
        "--n",
        "4",
        "--steps",
        "6",
        "--scale",
        "2",
        "--out",
        str(out),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["seeds"] == [0, 1, 2, 3] and report["out"] == str(out)
    with Image.open(out) as picture:
        assert picture.size == (2 * (4 * 34 + 2), 2 * 36)  # 4 tiles of 32 px with 2 px gutters, x2


def test_status_json_shows_settings_and_weights(tmp_path):
    result = lethe("status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["settings"]["base_model"] == "shapes"
    assert status["shapes_world"]["trained"] is True
    assert len(status["shapes_world"]["sha256"]) == 64


def test_malformed_settings_file_is_one_line_exit_2(tmp_path):
    (tmp_path / "lethe.toml").write_text("device = [unclosed\n")
    assert_one_line_error(lethe("status", cwd=tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ("evaluate", "--target", "circle", "--samples", "1", "--steps", "2"),
        ("unlearn", "--concept", "circle", "--method", "uce", "--eval-samples", "1", "--out", "ul"),
    ],
)
def test_evaluate_and_unlearn_honour_settings_policy(tmp_path, command):
    """settings.policy (LETHE_POLICY) is the gate of every evaluation, not only of the flow's."""
    (tmp_path / "strict.yaml").write_text(
        "name: strict-test-policy\nthresholds:\n  - metric: forget.gate.ua\n    min: 2.0\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LETHE_HOME": str(tmp_path / "home"),
        "LETHE_POLICY": str(tmp_path / "strict.yaml"),
        "LETHE_SAMPLE_STEPS": "2",
    }
    env.pop("LETHE_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *command, "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    decision = (payload["evaluation"] if command[0] == "unlearn" else payload)["decision"]
    assert decision["passed"] is False
    assert [c["metric"] for c in decision["checks"]] == ["forget.gate.ua"]  # only the strict policy's threshold
    assert "< 2.0" in decision["reasons"][0]


@pytest.mark.slow
def test_unlearn_from_an_earlier_unlearn_folder_judges_the_earlier_concepts_rebound(tmp_path):
    """`lethe unlearn --model <folder>` takes the lineage's erased concepts from the folder (replayed, and
    judged for rebound), as the request flow takes them from the parent version; a contradicting `--erased`
    is refused before anything is written."""
    from tests.tiny_models import build_tiny_base

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "LETHE_HOME": str(tmp_path / "home"),
        "LETHE_BASE_MODEL": str(build_tiny_base(tmp_path / "tiny-sd")),
        "LETHE_WORLD": "shapes",  # a tiny model judged as a shapes-world model
        "LETHE_SAMPLE_STEPS": "2",
    }
    env.pop("LETHE_CONFIG", None)

    def unlearn(*args):
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", "unlearn", "--eval-samples", "1", *args, "--json"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )

    first = unlearn("--concept", "circle", "--out", "circle")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["evaluation"]["checks"]["rebound"] == {}

    refused = unlearn("--model", "circle", "--concept", "striped", "--erased", "star", "--out", "refused")
    assert_one_line_error(refused)
    assert "contradicts the parent, which erased circle" in refused.stderr
    assert not (tmp_path / "refused").exists()

    second = unlearn("--model", "circle", "--concept", "striped", "--out", "striped")
    assert second.returncode == 0, second.stderr
    rebound = json.loads(second.stdout)["evaluation"]["checks"]["rebound"]
    assert list(rebound) == ["circle"] and rebound["circle"]["n"] > 0
    summary = json.loads((tmp_path / "striped" / "summary.json").read_text())
    assert summary["config"]["erased"] == ["circle"]  # replayed while training, not preserved against


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--requests", "requests.yaml", "--auto-approve"),
        ("unlearn", "--concept", "circle", "--out", "ul"),
        ("audit",),
    ],
    ids=["run", "unlearn", "audit"],
)
def test_a_malformed_attack_corpus_is_one_line_before_anything_is_written(tmp_path, args):
    """LETHE_HOME/attacks.json (pipeline/attacks.py) is read by every gated evaluation: broken, it is refused
    before a request is submitted or a model trained, not after a request's sampling."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "attacks.json").write_text('{"circle": "not a list"}')
    (tmp_path / "requests.yaml").write_text("- concept: circle\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LETHE_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert_one_line_error(result)
    assert "attacks.json" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "requests.yaml"]
    assert [p.name for p in home.iterdir()] == ["attacks.json"]
