"""bench/gpu_step.py runs its real DUGE step at the tiny size on CPU and reports positive numbers."""

import math

import pytest
import torch

from tests.benches import load_bench


@pytest.mark.slow
def test_gpu_step_bench_runs_tiny_on_cpu(capsys):
    threads = torch.get_num_threads()
    try:  # one thread: on a shared 2-core machine two spin-waiting threads make it ~5x slower
        result = load_bench("gpu_step").main(
            [
                "--device",
                "cpu",
                "--size",
                "tiny",
                "--steps",
                "2",
                "--warmup",
                "0",
                "--threads",
                "1",
                "--params",
                "xattn-kv",
                "full",
                "lora",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert [(row["params"], row["mode"]) for row in result["rows"]] == [
        ("xattn-kv", "eager"),
        ("full", "eager"),
        ("lora", "eager"),
    ]
    for row in result["rows"]:
        for field in (
            "ms_per_step",
            "samples_per_s",
            "gflop_per_step",
            "tflop_per_s",
            "peak_memory_gib",
            "trained_parameters",
        ):
            assert isinstance(row[field], (int, float)) and math.isfinite(row[field]) and row[field] > 0, (
                row["params"],
                field,
                row[field],
            )
        assert len(row["ms_per_step_all"]) == 2
    kv, full, lora = result["rows"]
    assert (
        kv["trained_parameters"] < full["trained_parameters"]
        and lora["trained_parameters"] < full["trained_parameters"]
    )
    assert full["gflop_per_step"] > kv["gflop_per_step"]  # full training back-propagates into every weight
    table = capsys.readouterr().out
    assert "| xattn-kv | eager |" in table and "| full | eager |" in table


@pytest.mark.slow
def test_flop_count_on_the_meta_device_matches_the_cpu_step():
    """The bench counts FLOPs on the meta device (nothing computed): the count must equal the one taken
    while a real CPU step of the same size runs, so the SD1.5 count it gives on any machine can be trusted."""
    from diffusers import UNet2DConditionModel

    bench = load_bench("gpu_step")
    size = bench.SIZES["tiny"]
    for params in ("xattn-kv", "full"):
        torch.manual_seed(0)
        on_cpu = bench.count_flops(
            UNet2DConditionModel(**size["unet"]), params=params, batch=size["batch"], seq=size["seq"]
        )
        on_meta = bench.count_flops(
            UNet2DConditionModel(**size["unet"]).to("meta"), params=params, batch=size["batch"], seq=size["seq"]
        )
        assert on_meta == on_cpu > 0, params
