"""The default method under the shipped policy, at the gate's own sizes: the main job's first request
(examples/requests.yaml: circle, synonym disc, preserve ring) erased from the shapes base by `lethe unlearn`
must pass every rule — forget, retain, sweep (relocations, leak, broad retention) and the attack.

At the shipped sizes one evaluation samples some thousands of images and runs the attack (about 25 minutes
on CI's two cores, a minute or two on a GPU), so the test runs where a CUDA device is, or where
LETHE_TEST_SHIPPED_GATE=1 asks for it on a CPU; bench/RESULTS.md records each measured run."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() and os.environ.get("LETHE_TEST_SHIPPED_GATE") != "1",
        reason="the shipped gate's sizes: a CUDA device, or LETHE_TEST_SHIPPED_GATE=1 (about 25 min on 2 cores)",
    ),
]


def test_the_default_method_passes_the_shipped_policy_on_the_main_job_s_first_request(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}  # the shipped settings, not tests'
    env.update(HF_HUB_OFFLINE="1", LETHE_HOME=str(tmp_path / "home"), LETHE_EVAL_DIAGNOSTICS="false")
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "unlearn", "--concept", "circle", "--synonym", "disc"]
        + ["--preserve", "ring", "--out", str(tmp_path / "circle"), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(result.stdout)
    summary = json.loads((tmp_path / "circle" / "summary.json").read_text())
    assert summary["config"]["method"] == "continual-uce"  # the default, not a method this test picked
    decision = payload["evaluation"]["decision"]
    assert decision["passed"], "; ".join(decision["reasons"])
    checks = payload["evaluation"]["checks"]
    assert checks["attack"]["circle"]["n"] >= 6 and checks["sweep"]["concepts"]["circle"]["leak"]["n"] > 0
