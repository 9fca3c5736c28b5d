"""The committed detector judges fresh renders (clean and degraded) at the foundation issue's bars."""

import torch

from unlearning.shapes.world_eval import evaluate_detector


def test_committed_detector_meets_its_accuracy_bars_on_fresh_renders(detector):
    result = evaluate_detector(detector, n=600)
    clean, degraded = result["clean"], result["degraded"]
    assert clean["object"] >= 0.98 and clean["style"] >= 0.97 and clean["colour"] >= 0.97, clean
    assert min(degraded.values()) >= 0.95, degraded


def test_degrade_is_seeded_and_stays_in_range():
    from unlearning.shapes.detector import degrade

    images = torch.rand(4, 3, 32, 32) * 2 - 1
    a = degrade(images, torch.Generator().manual_seed(1))
    b = degrade(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, images)


def test_features_have_the_documented_shapes(detector):
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        maps = detector.stage_features(x)
        assert [m.shape[-1] for m in maps] == [32, 16, 8]
        assert detector.embed(x).shape == (2, detector.feature_dim)
