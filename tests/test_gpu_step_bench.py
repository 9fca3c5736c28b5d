"""bench/gpu_step.py runs its real DUGE step at the tiny size on CPU and reports positive numbers."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_step.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_step_bench_runs_tiny_on_cpu(capsys):
    threads = torch.get_num_threads()
    try:  # one thread: on a shared 2-core machine two spin-waiting threads make it ~5x slower
        result = _bench().main(["--device", "cpu", "--size", "tiny", "--steps", "2", "--warmup", "0", "--threads", "1",
                                "--params", "xattn-kv", "full", "lora"])
    finally:
        torch.set_num_threads(threads)
    assert [(row["params"], row["mode"]) for row in result["rows"]] == [("xattn-kv", "eager"), ("full", "eager"), ("lora", "eager")]
    for row in result["rows"]:
        for field in ("ms_per_step", "samples_per_s", "gflop_per_step", "tflop_per_s", "peak_memory_gib", "trained_parameters"):
            assert isinstance(row[field], (int, float)) and math.isfinite(row[field]) and row[field] > 0, (row["params"], field, row[field])
        assert len(row["ms_per_step_all"]) == 2
    kv, full, lora = result["rows"]
    assert kv["trained_parameters"] < full["trained_parameters"] and lora["trained_parameters"] < full["trained_parameters"]
    assert full["gflop_per_step"] > kv["gflop_per_step"]  # full training back-propagates into every weight
    table = capsys.readouterr().out
    assert "| xattn-kv | eager |" in table and "| full | eager |" in table


@pytest.mark.slow
def test_flop_count_on_the_meta_device_matches_the_cpu_step():
    """--flops-only builds the UNet on the meta device (nothing computed): the count must equal the one
    taken on a real CPU step of the same size, so the SD1.5 count it gives on any machine can be trusted."""
    bench = _bench()
    meta = bench.main(["--flops-only", "--size", "tiny", "--params", "xattn-kv", "full"])
    threads = torch.get_num_threads()
    try:
        cpu = bench.main(["--device", "cpu", "--size", "tiny", "--steps", "1", "--warmup", "0", "--threads", "1", "--params", "xattn-kv", "full"])
    finally:
        torch.set_num_threads(threads)
    assert [r["gflop_per_step"] for r in meta["rows"]] == [r["gflop_per_step"] for r in cpu["rows"]]
    assert all(r["gflop_per_step"] > 0 for r in meta["rows"])
