"""bench/gpu_real.py runs every row on tiny configs on CPU, and its numbers hold together."""

import json
import math

import pytest
import torch

from tests.benches import load_bench


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_gpu_real_bench_runs_tiny_on_cpu(tmp_path, capsys):
    """Per model, with the parts the bench measured:
        images/s       = images timed / seconds timed, images timed = batch × repeats
        gate images    = plan + sweep + attack images
        gate s         = gate images / images/s + attack steps × attack step s
    and from the evaluator's defaults (AttackBudget a, SweepSize w):
        attack steps   = a.prompts × |a.variants| × a.steps
        attack images  = a.prompts × (2 a.batch + 2 a.confirm_seeds
                                      + |a.variants| ⌈a.steps / a.check_every⌉ a.check_seeds)
        sweep images   = (w.vocabulary_prompts + w.variants_per_concept) w.screen_seeds
                         + w.confirm_prompts w.confirm_seeds
    """
    from diffusers import UNet2DConditionModel

    from unlearning.evaluation.attack import AttackBudget
    from unlearning.evaluation.sweep import SweepSize

    bench = load_bench("gpu_real")
    threads = torch.get_num_threads()
    out = tmp_path / "gpu_real.json"
    try:  # one thread: on a shared 2-core machine two spin-waiting threads make it much slower
        result = bench.main(
            [
                "--size",
                "tiny",
                "--device",
                "cpu",
                "--repeats",
                "2",
                "--warmup",
                "0",
                "--threads",
                "1",
                "--json",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)

    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [row["model"] for row in result["models"]] == ["sd15", "sdxl"]
    assert result["peak_bf16_flops"] is None  # a CPU has no bf16 tensor-core peak: MFU is n/a
    a, w = AttackBudget(), SweepSize()
    for row in result["models"]:
        model = row["model"]
        edit, sampling, duge, attack, gate = row["edit"], row["sampling"], row["duge"], row["attack_step"], row["gate"]
        for value in (
            edit["seconds"],
            sampling["seconds"],
            sampling["images_per_s"],
            sampling["denoise_s_per_batch"],
            sampling["decode_s_per_batch"],
            duge["ms_per_step"],
            duge["flops_per_step"],
            duge["tflop_per_s"],
            attack["seconds"],
            gate["seconds"],
        ):
            assert _positive(value), (model, row)
        assert len(attack["seconds_all"]) == 2 and len(duge["ms_per_step_all"]) == 2

        # the edit wrote every attn2 to_k and to_v of the UNet (a closed form touches each of them)
        unet = UNet2DConditionModel(**bench.gpu_models.TINY[model]["unet"]).to("meta")
        attn2 = [name for name, _ in unet.named_modules() if name.endswith("attn2")]
        assert attn2 and edit["trained_tensors"] == 2 * len(attn2), (model, edit)

        assert sampling["images"] == sampling["batch"] * 2
        assert sampling["images_per_s"] == pytest.approx(sampling["images"] / sampling["seconds"], rel=1e-12)
        # the denoise and decode of the median batch fit inside the timed total
        assert sampling["denoise_s_per_batch"] + sampling["decode_s_per_batch"] <= sampling["seconds"]

        assert duge["mfu"] is None
        assert duge["tflop_per_s"] == pytest.approx(duge["flops_per_step"] / (duge["ms_per_step"] / 1e3) / 1e12)

        assert gate["attack_steps"] == a.prompts * len(a.variants) * a.steps
        checks = math.ceil(a.steps / a.check_every)
        per_phrasing = 2 * a.batch + 2 * a.confirm_seeds + len(a.variants) * checks * a.check_seeds
        assert gate["attack_images"] == a.prompts * per_phrasing
        assert gate["sweep_images"] == (w.vocabulary_prompts + w.variants_per_concept) * w.screen_seeds + (
            w.confirm_prompts * w.confirm_seeds
        )
        assert gate["plan_images"] >= 3 * 96  # three forget sets of PlanSize().forget_images, and a retained set
        assert gate["images"] == gate["plan_images"] + gate["sweep_images"] + gate["attack_images"]
        assert gate["images_per_s"] == sampling["images_per_s"] and gate["attack_step_s"] == attack["seconds"]
        assert gate["seconds"] == pytest.approx(
            gate["images"] / sampling["images_per_s"] + gate["attack_steps"] * attack["seconds"], rel=1e-12
        )

    # SDXL's tiny UNet is the larger one and its step counts more FLOPs at the same batch
    sd15, sdxl = result["models"]
    assert sdxl["unet_parameters"] > sd15["unet_parameters"]
    assert sdxl["duge"]["flops_per_step"] > sd15["duge"]["flops_per_step"]
    table = capsys.readouterr().out
    assert "| sd15 |" in table and "| sdxl |" in table and "gate s = " in table and "| n/a |" in table


def test_cuda_without_a_gpu_is_one_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: test_gpu_real_bench_on_cuda runs the CUDA path")
    with pytest.raises(SystemExit):
        load_bench("gpu_real").main(["--device", "cuda", "--size", "tiny"])
    assert "no CUDA device here" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_real_bench_on_cuda():
    """The CUDA path at the tiny size: bf16 sampling, and an MFU on a device of the peak table."""
    bench = load_bench("gpu_real")
    result = bench.main(["--size", "tiny", "--device", "cuda", "--repeats", "2", "--warmup", "1"])
    assert result["sampling_dtype"] == "bfloat16"
    for row in result["models"]:
        assert _positive(row["sampling"]["images_per_s"]) and _positive(row["gate"]["seconds"])
        if result["peak_bf16_flops"] is not None:
            assert 0 < row["duge"]["mfu"] < 1
