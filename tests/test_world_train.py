"""World training is seeded and resumable: a run killed after a checkpoint, started again, ends
with exactly the weights of an uninterrupted run."""

import pytest
from safetensors.torch import load_file

from unlearning.shapes import train
from unlearning.shapes.train import WorldTrainConfig


def _weights(path):
    return load_file(path)


def _kill_after_first_checkpoint(monkeypatch):
    real_save = train._save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        raise KeyboardInterrupt("simulated kill right after a checkpoint")

    monkeypatch.setattr(train, "_save_checkpoint", save_then_die)


@pytest.mark.slow
def test_detector_stage_resumes_to_identical_weights(tmp_path, monkeypatch):
    cfg = WorldTrainConfig(detector_steps=4, detector_batch=16, checkpoint_every=2)
    train.train_detector(cfg, tmp_path / "a", tmp_path / "work-a")

    _kill_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train.train_detector(cfg, tmp_path / "b", tmp_path / "work-b")
    assert (tmp_path / "work-b" / "detector.pt").is_file()
    assert not (tmp_path / "b" / "detector.safetensors").exists()
    monkeypatch.undo()
    train.train_detector(cfg, tmp_path / "b", tmp_path / "work-b")

    a, b = _weights(tmp_path / "a" / "detector.safetensors"), _weights(tmp_path / "b" / "detector.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)


@pytest.mark.slow
def test_vae_stage_resumes_to_identical_weights(tmp_path, monkeypatch):
    cfg = WorldTrainConfig(vae_steps=4, vae_batch=4, checkpoint_every=2)
    train.train_vae(cfg, tmp_path / "a", tmp_path / "work-a")
    _kill_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train.train_vae(cfg, tmp_path / "b", tmp_path / "work-b")
    monkeypatch.undo()
    summary = train.train_vae(cfg, tmp_path / "b", tmp_path / "work-b")
    a = _weights(tmp_path / "a" / "vae" / "diffusion_pytorch_model.safetensors")
    b = _weights(tmp_path / "b" / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)
    assert summary["scaling_factor"] > 0


def test_finished_stages_are_skipped(tmp_path):
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "detector.safetensors").write_bytes(b"already trained")
    summary = train.train_world(WorldTrainConfig(), weights, tmp_path / "work", stages=("detector",))
    assert summary["stages"] == {}
    assert (weights / "detector.safetensors").read_bytes() == b"already trained"


@pytest.mark.slow
def test_unet_stage_fine_tunes_from_the_given_weights(tmp_path):
    """`--unet-init`: training starts from those weights (at lr 0 one step changes nothing), and the
    summary names them by sha256."""
    import shutil

    from unlearning.files import sha256_file
    from unlearning.shapes.shipped import WEIGHTS_DIR

    weights = tmp_path / "w"
    weights.mkdir()
    shutil.copytree(WEIGHTS_DIR / "vae", weights / "vae")
    init = WEIGHTS_DIR / "unet"
    cfg = WorldTrainConfig(unet_images=8, unet_batch=2, unet_steps=1, unet_lr=0.0, unet_init=str(init))
    summary = train.train_unet(cfg, weights, tmp_path / "work")

    start = _weights(init / "diffusion_pytorch_model.safetensors")
    tuned = _weights(weights / "unet" / "diffusion_pytorch_model.safetensors")
    assert start.keys() == tuned.keys()
    assert all(start[k].equal(tuned[k]) for k in start)
    assert summary["init_sha256"] == sha256_file(init / "diffusion_pytorch_model.safetensors")
