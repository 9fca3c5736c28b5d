"""The zero-shot CLIP judge (unlearning/evaluation/clip_judge.py) on a tiny CLIP built from config, with a
byte-level BPE tokenizer whose vocab.json and merges.txt this file writes (no hub, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.tiny_models import write_clip_tokenizer
from unlearning.evaluation.clip_judge import TEMPLATES, ClipJudge, JudgeModelError, check_judge_model
from unlearning.world import NoJudge

HEADS = {"object": ("cherry", "sky", "car"), "style": ("watercolour", "photograph")}


def tiny_clip(folder):
    """A seeded CLIP of hidden size 32, two layers per tower, 32 px images in 8 px patches (transformers'
    CLIP test sizes), saved with its processor into `folder`; returns (model, processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab_size = write_clip_tokenizer(folder / "bpe")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "bpe")
    eos, bos = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|startoftext|>"])
    tower = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(
        text_config=dict(
            **tower,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            eos_token_id=eos,
            bos_token_id=bos,
            pad_token_id=eos,
        ),
        vision_config=dict(**tower, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tiny_clip(folder)
    return folder


def solid(rgb, n: int = 1, size: int = 48, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = np.broadcast_to(np.array(rgb, dtype=float), (n, size, size, 3)) + rng.normal(0, noise, (n, size, size, 3))
    return images.clip(0, 255).astype(np.uint8)


def test_the_tokenizer_the_test_writes_is_real_bpe(clip_dir):
    """The merges apply: "cherry" is the pieces che·rr·y</w>, not seven characters (a tokenizer that ignored
    merges.txt would give the latter)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(clip_dir / "bpe")
    assert tokenizer.tokenize("cherry sky") == ["cherr", "y</w>", "sky</w>"]


def test_the_judge_loads_from_a_folder_and_its_outputs_have_the_interface_shapes(clip_dir):
    judge = ClipJudge.load(str(clip_dir), HEADS)
    images = np.concatenate([solid((200, 0, 0), 2), solid((0, 0, 200), 3, noise=30.0)])
    probs = judge.probabilities(images)
    assert set(probs) == set(HEADS)
    for head, classes in HEADS.items():
        assert probs[head].shape == (5, len(classes))
        np.testing.assert_allclose(probs[head].sum(axis=1), 1.0, atol=1e-6)  # float32 softmax
        assert (probs[head] > 0).all()
    maps = judge.feature_maps(images)
    assert judge.feature_layers == (1, 2)
    assert [tuple(m.shape) for m in maps] == [(5, 32, 4, 4)] * 2  # 32 px / 8 px patches: a 4 x 4 grid
    embeddings = judge.embeddings(images)
    assert embeddings.shape == (5, 16) and embeddings.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    scores = judge.target_scores(images, "sky", probs)
    assert scores["head"] == "object" and scores["n"] == 5
    assert scores["mean_probability"] == pytest.approx(probs["object"][:, 1].mean())
    assert scores["top1"] == pytest.approx((probs["object"].argmax(axis=1) == 1).mean())


def test_one_template_gives_clip_s_own_zero_shot_logits(clip_dir):
    """With one template "{}", the judge's probabilities are softmax(logits_per_image) of CLIPModel's own
    forward pass on the class names: exp(logit_scale) · cos(image, text) (Radford et al. 2021, fig. 3).
    The logit scale is moved off its initial value so that a judge ignoring it would fail."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    with torch.no_grad():
        model.logit_scale.fill_(4.0)
    processor = CLIPProcessor.from_pretrained(clip_dir, local_files_only=True)
    classes = HEADS["object"]
    judge = ClipJudge(model, processor, {"object": classes}, templates={"object": ("{}",)})
    images = np.concatenate([solid((200, 0, 0), 1), solid((30, 160, 40), 1, noise=20.0)])
    inputs = processor(text=list(classes), images=list(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.softmax(dim=-1).numpy()
    np.testing.assert_allclose(judge.probabilities(images)["object"], expected, atol=1e-5)


def test_a_judge_trained_to_match_colours_to_words_names_them(tmp_path):
    """Train the tiny CLIP contrastively (Radford et al. 2021, fig. 3's symmetric cross-entropy, here
    image-to-class over the template ensemble) for 60 steps on a red and a blue image against the words
    "cherry" and "sky", save it, load the judge from the folder: fresh noisy red and blue images are
    judged cherry and sky, the target's top-1 rate and mean probability follow, and a swapped
    class order swaps the verdicts (the class index is read, not assumed)."""
    model, processor = tiny_clip(tmp_path)
    model.train()
    classes, templates = ("cherry", "sky"), TEMPLATES["object"]
    tokens = processor.tokenizer([t.format(c) for c in classes for t in templates], padding=True, return_tensors="pt")
    training_images = np.concatenate([solid((200, 0, 0)), solid((0, 0, 200))])
    pixels = processor.image_processor(images=list(training_images), return_tensors="pt")["pixel_values"]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    labels = torch.tensor([0, 1])
    for _ in range(60):
        text = F.normalize(model.text_projection(model.text_model(**tokens).pooler_output), dim=-1)
        text = F.normalize(text.reshape(len(classes), len(templates), -1).mean(dim=1), dim=-1)
        image = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * image @ text.T, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.save_pretrained(tmp_path)

    judge = ClipJudge.load(str(tmp_path), {"object": classes})
    red, blue = solid((210, 10, 5), 4, noise=8.0, seed=1), solid((5, 10, 210), 4, noise=8.0, seed=2)
    probs = judge.probabilities(np.concatenate([red, blue]))["object"]
    assert list(probs.argmax(axis=1)) == [0] * 4 + [1] * 4
    on_red = judge.target_scores(red, "cherry")
    assert on_red["top1"] == 1.0 and on_red["mean_probability"] > 0.5
    assert judge.target_scores(blue, "cherry")["top1"] == 0.0
    swapped = ClipJudge.load(str(tmp_path), {"object": ("sky", "cherry")})
    assert list(swapped.probabilities(red)["object"].argmax(axis=1)) == [1] * 4


@pytest.mark.parametrize("kind", ["empty", "bert", "file", "missing", "not-json"])
def test_a_folder_that_is_not_a_clip_model_is_one_clear_error(tmp_path, kind):
    folder = tmp_path / "judge"
    expected = {
        "empty": "has no config.json",
        "bert": "config.json has model_type 'bert'",
        "file": "is a file, not a folder",
        "missing": "no such folder",
        "not-json": "config.json is not a JSON object",
    }[kind]
    if kind == "empty":
        folder.mkdir()
    elif kind == "bert":
        from transformers import BertConfig

        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(
            folder
        )
    elif kind == "file":
        folder.write_text("weights")
    elif kind == "not-json":
        folder.mkdir()
        (folder / "config.json").write_text("[1, 2")
    with pytest.raises(JudgeModelError) as caught:
        ClipJudge.load(str(folder), HEADS)
    message = str(caught.value)
    assert isinstance(caught.value, NoJudge)  # the CLI's model commands refuse it in one line (exit 2)
    assert "\n" not in message and str(folder) in message and expected in message
    assert "expected a CLIP model" in message


def test_a_clip_config_without_its_tokenizer_cannot_be_loaded_and_says_so(tmp_path, clip_dir):
    from transformers import CLIPConfig

    CLIPConfig.from_pretrained(clip_dir).save_pretrained(tmp_path)  # config.json only: no weights, no tokenizer
    check_judge_model(str(tmp_path))  # the torch-free check passes: it is a CLIP config
    with pytest.raises(JudgeModelError, match="cannot be loaded"):
        ClipJudge.load(str(tmp_path), HEADS)


def test_a_hub_id_offline_that_is_not_on_disk_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no folder of that name here: it is read as a hub id
    check_judge_model("lethe-tests/no-such-clip")  # a hub id is checked when it is loaded
    with pytest.raises(JudgeModelError, match="^judge_model lethe-tests/no-such-clip: cannot be loaded"):
        ClipJudge.load("lethe-tests/no-such-clip", HEADS)


def test_malformed_heads_are_refused_at_setup(clip_dir):
    with pytest.raises(ValueError, match="no prompt templates for the domain 'colour'.*names a class twice"):
        ClipJudge.load(str(clip_dir), {"colour": ("red",), "object": ("cat", "cat")})
