"""Mining: the prompts of the method's own half of the vocabulary on which the parent draws the concept
without naming it (docs/erasure.md, "An edit that holds").

The sweep's leak (unlearning/evaluation/sweep.py) asks whether the candidate still draws an erased
concept where the base draws it for a prompt that does not name it ("the finding in the middle" draws
circles). An edit of the concept's words cannot reach such a prompt, and broad prior preservation holds
it where it is. So a method that mines looks for them on its side of the vocabulary split: it samples
the parent on its broad prompts (`unlearning.prompts.broad_prompts`, the method's half of the words),
the world's judge looks, and the prompts it draws the concept for — by the sweep's own rule,
`drawn_for_the_prompt` — leave the preserve set and join the forget set (unlearning/loop.py). The sweep
then judges on the other half: a mined word is never a sweep word.
"""

from __future__ import annotations

import hashlib

import numpy as np
from tqdm.auto import tqdm

from unlearning.evaluation.sweep import drawn_for_the_prompt
from unlearning.sampling import generate

MINE_SEED = 600_000_000  # mining seeds live apart from training (0…), plan, sweep and attack seeds
MINE_SEEDS = 4  # images per prompt: "at least half" needs a few, the binomial test against background more


def mine_seed(prompt: str, index: int) -> int:
    return MINE_SEED + int(hashlib.sha256(f"{prompt}|{index}".encode()).hexdigest()[:8], 16) % 100_000_000


def mine_prompts(
    pipe,
    judge,
    *,
    head: str,
    concept: str,
    prompts: list[str],
    steps: int,
    guidance_scale: float,
    seeds_each: int = MINE_SEEDS,
    progress: bool = False,
) -> tuple[list[str], dict]:
    """(the prompts of `prompts` the parent `pipe` draws `concept` for, a record of the screening): each
    prompt sampled on `seeds_each` seeds, judged by `judge`'s `head`, selected by the sweep's rule with
    the background rate over all of `prompts` — or, with one seed, every prompt whose one image shows the
    concept (an image of the concept the parent drew for a prompt that did not ask for it: erasing it
    where it happened, even by chance, trains the parent's habit of drawing it unasked)."""
    if not prompts:
        return [], {"prompts": 0, "seeds": seeds_each, "background": 0.0, "mined": []}
    texts = [p for p in prompts for _ in range(seeds_each)]
    seeds = [mine_seed(p, i) for p in prompts for i in range(seeds_each)]
    chunk = 64
    images = np.concatenate(
        [
            generate(pipe, texts[i : i + chunk], seeds[i : i + chunk], steps=steps, guidance_scale=guidance_scale)
            for i in tqdm(range(0, len(texts), chunk), desc=f"mining {concept}", unit="batch", disable=not progress)
        ]
    )
    index = judge.heads[head].index(concept)
    hits = (judge.probabilities(images)[head].argmax(axis=1) == index).reshape(len(prompts), seeds_each)
    background = float(hits.mean())
    drawn = hits[:, 0] if seeds_each == 1 else drawn_for_the_prompt(hits, background)
    mined = [p for p, keep in zip(prompts, drawn) if keep]
    record = {
        "prompts": len(prompts),
        "seeds": seeds_each,
        "background": background,
        "mined": [{"prompt": p, "hits": int(row.sum())} for p, row, keep in zip(prompts, hits, drawn) if keep],
    }
    return mined, record
