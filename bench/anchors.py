"""Benchmark: what the shapes base draws for an anchor word — the ceiling of an edit towards it.

    .venv/bin/python bench/anchors.py [--objects shape square ""] [--styles "" solid]

An edit maps the erased concept's tokens to the anchor's, so the erased prompts draw what the base
draws for the anchor prompts; where that includes the target itself, no method can erase more than
the rest. For each object anchor: 36 prompts (2 training templates x red/orange/yellow x 6 styles)
with the anchor in the object slot; for each style anchor: 36 (2 templates x red/green/blue x 6
objects) in the style slot; the first judge's top-1 class counted. DDIM 20 steps, CFG 5, seeds 0..35.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
from datetime import date

os.environ.setdefault("HF_HUB_OFFLINE", "1")

OBJECT_SLOT_COLOURS = ("red", "orange", "yellow")
STYLE_SLOT_COLOURS = ("red", "green", "blue")
STYLE_SLOT_OBJECTS = ("circle", "square", "star", "heart", "cross", "diamond")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", nargs="*", default=["shape", "", "square", "triangle"])
    parser.add_argument("--styles", nargs="*", default=["", "solid", "gradient"])
    args = parser.parse_args()

    import numpy as np

    from unlearning.sampling import generate, load_model
    from unlearning.shapes.judge import shapes_judges
    from unlearning.shapes.vocabulary import STYLES, TRAIN_TEMPLATES

    pipe, judge = load_model("shapes"), shapes_judges()[0]
    print(f"## What the base draws for an anchor — {date.today()}, {platform.machine()}, {os.cpu_count()} cores\n")
    print("| slot | anchor | prompts | the judge's top classes (count) |")
    print("|---|---|---|---|")
    for slot, words, others, colours, head in (
        ("object", args.objects, STYLES, OBJECT_SLOT_COLOURS, "object"),
        ("style", args.styles, STYLE_SLOT_OBJECTS, STYLE_SLOT_COLOURS, "style"),
    ):
        for word in words:
            prompts = [
                " ".join(t.format(colour=c, **{slot: word, ("style" if slot == "object" else "object"): o}).split())
                for t in TRAIN_TEMPLATES[:2]
                for c in colours
                for o in others
            ]
            images = np.asarray(generate(pipe, prompts, list(range(len(prompts))), steps=20, guidance_scale=5.0))
            top = judge.probabilities(images)[head].argmax(1)
            counts = collections.Counter(judge.heads[head][i] for i in top).most_common()
            shown = ", ".join(f"{name} {n}" for name, n in counts)
            print(f'| {slot} | {word or "(none)"} | {len(prompts)}, e.g. "{prompts[0]}" | {shown} |', flush=True)


if __name__ == "__main__":
    main()
