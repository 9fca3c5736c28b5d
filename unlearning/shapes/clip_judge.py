"""The shapes world's CLIP-format judge: a small CLIP trained contrastively on the world's renders, shipped
as a transformers `CLIPModel` + `CLIPProcessor` so the open world's zero-shot judge
(unlearning/evaluation/clip_judge.py `ClipJudge`) can load it and be checked against the shapes detector.

    python -m unlearning.shapes.clip_judge [--steps N] [--out unlearning/shapes/weights/clip_judge]

What it is trained on. Each step renders fresh scenes (render.py), half with tinted backgrounds, 80 % of
them degraded the way generated images are (detector.py `degrade`: blur, noise, jitter, decoder softness),
so that it judges the UNet's samples, not only clean renders. Each image gets one caption: the world's
own (vocabulary.py, synonyms included), or the judge's object templates (`TEMPLATES["object"]`, "a photo
of a circle") naming its object, or the style templates naming its style: zero-shot classification asks
exactly these. A few captions naming the open world's distractors ("a photo of a dog", "oil painting
style"), which no render shows, are negatives for every image, so a distractor class is not where a
shape lands by chance.

The loss is CLIP's symmetric InfoNCE with a learned temperature (Radford et al. 2021, sec. 2.5: logits
exp(t) · cos(image, text), t initialised to log(1/0.07), exp(t) clipped at 100), with one change: the
world has only 288 scenes, so a batch holds many image–caption pairs that are true but off the diagonal
("a photo of a circle" and every circle in the batch). Their targets are spread uniformly over every
caption (image) that describes the image (caption), as UniCL does (Yang et al. 2022, "Unified
Contrastive Learning in Image-Text-Label Space", eq. 3), instead of being pushed apart as negatives.

Why a from-scratch text tower, not the world's frozen MiniLM: the CLIP format fixes the text tower to a
`CLIPTextModel` read through a `CLIPTokenizer` (the judge calls `model.text_model` on the processor's
tokens and projects the end-of-text state); a BERT with its WordPiece vocabulary cannot be saved as one.
The judge's text side names only a few hundred words, which a tiny transformer learns in minutes.

The tokenizer is a real CLIP BPE (vocab.json + merges.txt) written here: every byte alone and as a word
end (so any text, even a word never seen, still tokenizes, by characters), and merges that build each
word of the captions, templates, distractors and synonyms into one token (checked after writing).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unlearning.evaluation.clip_judge import TEMPLATES
from unlearning.open_plan import DISTRACTORS
from unlearning.open_plan import HELDOUT_TEMPLATES as OPEN_HELDOUT_TEMPLATES
from unlearning.prompts import GENERIC_TEMPLATES
from unlearning.shapes.detector import cosine_lr, degrade, to_model_input
from unlearning.shapes.prompts import ERASE_TEMPLATES
from unlearning.shapes.render import random_scenes, render_batch
from unlearning.shapes.vocabulary import (
    COLOUR_NAMES,
    HELDOUT_TEMPLATES,
    OBJECTS,
    STYLES,
    SYNONYMS,
    all_scenes,
    sample_training_caption,
    training_captions,
)

WEIGHTS_DIR = Path(__file__).parent / "weights" / "clip_judge"
COMMAND = "python -m unlearning.shapes.clip_judge"
# The detector's input range is [-1, 1] (to_model_input: x / 127.5 - 1); the processor's normalisation
# (x / 255 - mean) / std gives the same with mean = std = 0.5, so the judge sees what training saw.
IMAGE_MEAN = IMAGE_STD = [0.5, 0.5, 0.5]


@dataclass(frozen=True)
class ClipJudgeConfig:
    seed: int = 0  # model init and every step's renders, degradation and captions derive from it
    steps: int = (
        12000  # fresh renders each step (4,000 left objects at 0.754 zero-shot on degraded renders, still rising)
    )
    batch: int = 64  # images (and captions) per step
    negatives: int = 16  # distractor captions per step, negatives for every image
    lr: float = 1.5e-3  # AdamW, linear warm-up then cosine to 10 %
    weight_decay: float = 0.1
    degraded_rate: float = 0.8  # share of renders degraded like generated images
    # Shares of captions: the world's own, the object templates; the rest the style templates. Objects get the
    # most: 1,500 steps of 128 at 0.4 / 0.3 named styles right 95 % of the time and objects 58 %; at 0.3 / 0.45
    # objects reached 0.47 by step 1,500 of 4,000, at 0.25 / 0.55 0.58 (zero-shot on 128 degraded renders).
    caption_world: float = 0.25
    caption_object: float = 0.55
    hidden: int = 128  # both towers
    vision_layers: int = 4
    text_layers: int = 4
    attention_heads: int = 4
    patch_size: int = 4  # 32 px images -> an 8 x 8 grid of patches
    projection_dim: int = 128
    eval_images: int = 480  # fresh renders (another seed) the zero-shot accuracy is measured on


# ---------------------------------------------------------------------------------------------- tokenizer


def _byte_alphabet() -> list[str]:
    """CLIP's byte -> unicode table (GPT-2's `bytes_to_unicode`), as 256 symbols in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = [], 0
    for b in range(256):
        if b in printable:
            codes.append(b)
        else:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word (characters, the last marked "</w>"): merge the lowest-ranked pair until none."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get(pair, 1 << 30), pair) for pair in zip(parts, parts[1:])]
        rank, (first, second) = min(pairs)
        if rank == 1 << 30:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def judge_words() -> list[str]:
    """Every lowercase word of the captions, the judge's templates, the open world's distractors and templates,
    and the world's names and synonyms, sorted."""
    texts = [c for scene in all_scenes() for c in training_captions(scene)]
    templates = (*TEMPLATES["object"], *TEMPLATES["style"], *HELDOUT_TEMPLATES, *ERASE_TEMPLATES)
    templates += (*GENERIC_TEMPLATES, *OPEN_HELDOUT_TEMPLATES)
    texts += [t.replace("{", " ").replace("}", " ") for t in templates]
    texts += [*OBJECTS, *STYLES, *COLOUR_NAMES, *DISTRACTORS["object"], *DISTRACTORS["style"]]
    texts += [s for synonyms in SYNONYMS.values() for s in synonyms]
    return sorted({w for text in texts for w in re.findall(r"[a-z]+", text.lower())})


def write_tokenizer(folder: Path, words: list[str]):
    """Write vocab.json and merges.txt of a CLIP BPE in which each of `words` is one token; return the
    loaded `CLIPTokenizer`.

    Merges build each word left to right; where earlier merges split a later word differently, merges of
    its remaining pieces are appended until it is whole (an appended merge never changes a word already
    whole: BPE takes the lowest-ranked pair, and a whole word has no pairs left).

    Raises:
        RuntimeError: the written tokenizer does not give each word as one token.
    """
    from transformers import CLIPTokenizer

    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for _ in range(20):
        pending = [pieces for w in words if len(pieces := _bpe(w, ranks)) > 1]
        if not pending:
            break
        for pieces in pending:
            left = pieces[0]
            for right in pieces[1:]:
                if (left, right) not in ranks:
                    ranks[(left, right)] = len(merges)
                    merges.append((left, right))
                left += right
    symbols = _byte_alphabet()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    split = [w for w in words if tokenizer.tokenize(w) != [w + "</w>"]]
    if split:
        raise RuntimeError(f"the tokenizer splits {len(split)} words: {', '.join(split[:10])}")
    return tokenizer


# ------------------------------------------------------------------------------------------------ batches


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * 31 + step)


def degraded_renders(n: int, seed: int, step: int, generator: torch.Generator, rate: float) -> tuple[np.ndarray, list]:
    """n fresh scenes rendered (half with tinted backgrounds), `rate` of them degraded; (uint8 images, scenes).
    The images are quantised back to uint8, as generated images are before any judge sees them."""
    scenes = random_scenes(n, seed=seed * 1_000_033 + 900_000 + step)
    half = n // 2
    images = np.concatenate(
        [
            render_batch(scenes[:half], seed=seed * 1_000_033 + 2 * step + 1_000_000),
            render_batch(scenes[half:], seed=seed * 1_000_033 + 2 * step + 1_000_001, background_tint=0.12),
        ]
    )
    x = to_model_input(torch.from_numpy(images))
    degraded = degrade(x, generator)
    keep = torch.rand(n, generator=generator) >= rate
    x = torch.where(keep[:, None, None, None], x, degraded)
    uint8 = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return uint8, scenes


def captions_for(
    scenes: list, rng: random.Random, world_rate: float, object_rate: float
) -> tuple[list[str], list[tuple[str, ...]]]:
    """One caption per scene and the attributes it names ("object", "style", "colour"): the world's own
    caption (all three), or a judge template naming the object or the style (synonyms at the world's rate)."""
    texts, named = [], []
    for scene in scenes:
        draw = rng.random()
        if draw < world_rate:
            texts.append(sample_training_caption(scene, rng))
            named.append(("object", "style", "colour"))
        else:
            domain = "object" if draw < world_rate + object_rate else "style"
            name = getattr(scene, domain)
            word = rng.choice(SYNONYMS[name]) if rng.random() < 0.25 else name
            texts.append(rng.choice(TEMPLATES[domain]).format(word))
            named.append((domain,))
    return texts, named


def negative_captions(count: int, rng: random.Random) -> list[str]:
    """Captions naming the open world's distractors in the judge's templates: nothing in the world is one."""
    out = []
    for _ in range(count):
        domain = rng.choice(("object", "style"))
        out.append(rng.choice(TEMPLATES[domain]).format(rng.choice(DISTRACTORS[domain])))
    return out


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, positive: torch.Tensor):
    """Symmetric InfoNCE (Radford et al. 2021, sec. 2.5) with targets spread over every true pair (UniCL eq. 3).

    image (N, d), text (M, d) normalised; positive (N, M) bool, with M >= N texts of which the first N are
    the images' own captions (a true pair is on the diagonal) and any more are negatives only."""
    logits = scale * image @ text.T
    targets = positive.float()
    image_to_text = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(dim=1)).sum(1).mean()
    own = positive[:, : image.shape[0]].T.float()  # (captions, images)
    text_to_image = -(own / own.sum(1, keepdim=True) * logits[:, : image.shape[0]].T.log_softmax(dim=1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


# --------------------------------------------------------------------------------------------- the recipe


def build_model(cfg: ClipJudgeConfig, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    eos, bos = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|startoftext|>"])
    tower = dict(hidden_size=cfg.hidden, intermediate_size=4 * cfg.hidden, num_attention_heads=cfg.attention_heads)
    config = CLIPConfig(
        text_config=dict(
            **tower,
            num_hidden_layers=cfg.text_layers,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            eos_token_id=eos,
            bos_token_id=bos,
            pad_token_id=eos,
        ),
        vision_config=dict(**tower, num_hidden_layers=cfg.vision_layers, image_size=32, patch_size=cfg.patch_size),
        projection_dim=cfg.projection_dim,
    )
    torch.manual_seed(cfg.seed)
    return CLIPModel(config)


JUDGED = {domain: (*names, *DISTRACTORS[domain]) for domain, names in (("object", OBJECTS), ("style", STYLES))}


def zero_shot_accuracy(judge, n: int, seed: int, rates=(("clean", 0.0), ("degraded", 1.0))) -> dict:
    """Top-1 of a `ClipJudge` of `JUDGED` (the world's objects or styles and the open world's distractors) on
    n fresh renders, clean and all degraded, drawn with `seed` (no training step uses seed + 5,000)."""
    out = {}
    for label, rate in rates:
        images, scenes = degraded_renders(n, seed + 5_000, 0, torch.Generator().manual_seed(seed + 5_000), rate)
        probs = judge.probabilities(images)
        out[label] = {
            head: round(
                float(np.mean([judge.heads[head][k] == getattr(s, head) for k, s in zip(p.argmax(1), scenes)])), 4
            )
            for head, p in probs.items()
        }
    out["n"] = n
    return out


def image_processor():
    """Resize and crop at 32 px (the identity on the world's images), then (x / 255 - 0.5) / 0.5."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD
    )


def train_clip_judge(cfg: ClipJudgeConfig, out_dir: Path = WEIGHTS_DIR, progress: bool = True) -> dict:
    """Train the judge (module docstring) and save it, with its processor and `training.json`, into `out_dir`."""
    from transformers import CLIPProcessor

    from unlearning.evaluation.clip_judge import ClipJudge

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(out_dir, judge_words())
    processor = CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer)
    model = build_model(cfg, tokenizer).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    mean = torch.tensor(IMAGE_MEAN)[:, None, None]
    std = torch.tensor(IMAGE_STD)[:, None, None]
    losses = []
    for step in range(cfg.steps):
        generator = _step_generator(cfg.seed, step)
        rng = random.Random(cfg.seed * 1_000_003 + step)
        images, scenes = degraded_renders(cfg.batch, cfg.seed, step, generator, cfg.degraded_rate)
        texts, named = captions_for(scenes, rng, cfg.caption_world, cfg.caption_object)
        texts += negative_captions(cfg.negatives, rng)
        positive = torch.zeros(cfg.batch, len(texts), dtype=torch.bool)
        for j, (scene, attributes) in enumerate(zip(scenes, named)):
            positive[:, j] = torch.tensor([all(getattr(s, a) == getattr(scene, a) for a in attributes) for s in scenes])
        pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        loss = contrastive_loss(image, text, model.logit_scale.exp().clamp(max=100.0), positive)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():  # CLIP clips the temperature at 100 (sec. 2.5)
            model.logit_scale.clamp_(max=float(np.log(100.0)))
        losses.append(loss.item())
        if progress and (step % 50 == 0 or step + 1 == cfg.steps):
            print(
                f"step {step:5d}  loss {np.mean(losses[-50:]):.4f}  scale {model.logit_scale.exp().item():.1f}",
                flush=True,
            )
        if progress and (step + 1) % 500 == 0:  # a look at the zero-shot top-1 on degraded renders (no saving)
            probe = zero_shot_accuracy(ClipJudge(model, processor, JUDGED), 128, cfg.seed, (("degraded", 1.0),))
            print(f"step {step + 1:5d}  zero-shot top-1 on 128 degraded renders {probe['degraded']}", flush=True)
            model.train()
    train_seconds = time.perf_counter() - started

    model.eval().save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    # measured on the saved folder, loaded as the open world loads a judge
    accuracy = zero_shot_accuracy(ClipJudge.load(str(out_dir), JUDGED), cfg.eval_images, cfg.seed)
    summary = {
        "command": COMMAND,
        "config": asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocabulary": len(tokenizer),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "logit_scale": round(model.logit_scale.exp().item(), 2),
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "zero_shot_top1": accuracy,
    }
    (out_dir / "training.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=ClipJudgeConfig.steps)
    parser.add_argument("--seed", type=int, default=ClipJudgeConfig.seed)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args()
    torch.set_num_threads(1)
    summary = train_clip_judge(ClipJudgeConfig(seed=args.seed, steps=args.steps), args.out)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
