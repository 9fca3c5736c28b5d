"""Parameter set `lora`: peft adapters on attn2 train alone, are merged at save time, and the delta names
only the merged attn2 weights; a killed lora run resumes to the uninterrupted weights."""

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from tests.tiny_models import assert_same_weights, kill_after_checkpoint, shapes_prompts_for, tiny_unet
from unlearning.delta import apply_delta_files, load_delta
from unlearning.loop import UnlearnConfig, run_unlearning
from unlearning.methods import duge
from unlearning.parameters import add_lora, lora_merged_weights, merge_lora, trainable_names
from unlearning.sampling import load_model

LORA_SUFFIXES = (".attn2.to_q.weight", ".attn2.to_k.weight", ".attn2.to_v.weight", ".attn2.to_out.0.weight")


def test_lora_trains_only_adapters_and_merges_into_the_attn2_weights():
    unet = tiny_unet()
    names = trainable_names(unet, "lora")
    assert names and all(n.endswith(LORA_SUFFIXES) for n in names)
    assert len(names) == 4 * sum(1 for n, _ in unet.named_modules() if n.endswith(".attn2"))

    adapters = add_lora(unet, rank=4, seed=0)
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == set(adapters)
    z, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 16)
    unet(z, t, c).sample.pow(2).mean().backward()
    assert all(p.grad is None for n, p in unet.named_parameters() if n not in adapters)
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in adapters.values())

    with torch.no_grad():  # a trained adapter: B ≠ 0
        for name, param in adapters.items():
            if ".lora_B." in name:
                param.normal_(std=0.1)
    merged = {n: w.detach().clone() for n, w in lora_merged_weights(unet).items()}
    assert sorted(merged) == sorted(names)
    with torch.no_grad():
        adapted_out = unet(z, t, c).sample
    merge_lora(unet)
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    state = unet.state_dict()
    assert not any("lora" in k or "base_layer" in k for k in state)
    for name in names:
        torch.testing.assert_close(state[name], merged[name], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(unet(z, t, c).sample, adapted_out, rtol=1e-5, atol=1e-5)


def test_lora_l2_sp_is_the_merged_weights_distance_to_the_base():
    """Right after add_lora, B = 0, so the merged weights equal the parent's. With a base θ_0 = θ_p − 1
    on every adapted weight, ‖θ − θ_0‖² / n = (n · 1²) / n = 1 — the parent's own drift from the base
    counts, not only the adapter's — and the gradient reaches the adapters (∂/∂B = 2(θ − θ_0)Aᵀ ≠ 0)."""
    unet = tiny_unet()
    names = trainable_names(unet, "lora")
    base = {n: unet.state_dict()[n] - 1.0 for n in names}
    adapters = add_lora(unet, rank=2, seed=0)
    reg = duge.l2_sp(lora_merged_weights(unet), base)
    torch.testing.assert_close(reg, torch.tensor(1.0))
    reg.backward()
    assert all(adapters[n].grad.abs().max() > 0 for n in adapters if ".lora_B." in n)


CONFIG = UnlearnConfig(
    concept="circle",
    method="duge",  # a gradient method: these tests are about the training loop
    synonyms=("disc",),
    preserve=("ring",),
    params="lora",
    steps=4,
    batch_size=2,
    prompts_per_concept=4,
    data_steps=2,
    checkpoint_every=2,
    lr=1e-2,
)


def _run(tiny_base, out, cfg=CONFIG):
    pipe = load_model(tiny_base)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    summary = run_unlearning(
        pipe, cfg, out, prompts=shapes_prompts_for(cfg), model_sha="tiny", base_values=base, progress=False
    )
    return pipe, summary


@pytest.mark.slow
def test_lora_run_writes_a_delta_of_merged_attn2_weights_that_reproduces_the_model(tiny_base, tmp_path):
    trained, summary = _run(tiny_base, tmp_path / "run")
    unet = trained.unet
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules()), "pipe.unet must be a plain UNet again"
    assert not any("lora" in k for k in unet.state_dict())
    assert summary["trained_parameters"] < sum(
        v.numel() for k, v in unet.state_dict().items() if k.endswith(LORA_SUFFIXES)
    )

    delta, header = load_delta(tmp_path / "run" / "delta.safetensors")
    assert header["params"] == "lora"
    assert sorted(delta) == sorted(f"unet.{n}" for n in trainable_names(unet, "lora"))
    assert any(v.abs().max() > 0 for v in delta.values()), "training must change the merged weights"

    base = load_model(tiny_base)
    apply_delta_files(base, [tmp_path / "run" / "delta.safetensors"])
    for key, value in unet.state_dict().items():
        torch.testing.assert_close(base.unet.state_dict()[key], value, rtol=0, atol=1e-6)
    z, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 7, 384)
    with torch.no_grad():
        torch.testing.assert_close(base.unet(z, t, c).sample, unet(z, t, c).sample, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_killed_lora_run_resumes_to_the_same_weights(tiny_base, tmp_path, monkeypatch):
    uninterrupted, _ = _run(tiny_base, tmp_path / "a")

    def adapters_only(state):  # the adapters are what is checkpointed
        assert state["trained"] and all(".lora_" in n for n in state["trained"])

    kill_after_checkpoint(monkeypatch, lambda: _run(tiny_base, tmp_path / "b"), check_state=adapters_only)
    resumed, summary = _run(tiny_base, tmp_path / "b")
    assert summary["resumed_from_step"] == 2
    assert_same_weights(uninterrupted.unet, resumed.unet)
