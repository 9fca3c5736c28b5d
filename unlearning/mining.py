"""Mining: the prompts of the method's own half of the vocabulary on which the parent draws the concept
without naming it (docs/erasure.md, "An edit that holds").

The sweep's leak (unlearning/evaluation/sweep.py) asks whether the candidate still draws an erased
concept where the base draws it for a prompt that does not name it ("the finding in the middle" draws
circles). An edit of the concept's words cannot reach such a prompt, and broad prior preservation holds
it where it is. So a method that mines looks for them on its side of the vocabulary split: it samples
the parent on its broad prompts (`unlearning.prompts.broad_prompts`, the method's half of the words; or
`mine_pool` of them, more than it preserves: the prompts drawn for are rare, a few in a hundred),
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


def _judged(pipe, judge, head, concept, texts, seeds, *, steps, guidance_scale, progress, desc) -> np.ndarray:
    """Whether the judge sees `concept` on the parent's image of each (text, seed)."""
    chunk = 64
    images = np.concatenate(
        [
            generate(pipe, texts[i : i + chunk], seeds[i : i + chunk], steps=steps, guidance_scale=guidance_scale)
            for i in tqdm(range(0, len(texts), chunk), desc=desc, unit="batch", disable=not progress)
        ]
    )
    return judge.probabilities(images)[head].argmax(axis=1) == judge.heads[head].index(concept)


def drawn_by(pipe, judge, *, head: str, concept: str, steps: int, guidance_scale: float, progress: bool = False):
    """prompts → whether `pipe`'s image of each (one seed, the screening's: `mine_seed(prompt, 0)`) shows
    `concept` to the judge — the parent's verdicts a closed form's `relocation_away_screen` asks for
    (continual_uce.py): a pool prompt the parent draws the concept for is not held away from it."""

    def drawn(prompts: list[str]) -> np.ndarray:
        seeds = [mine_seed(p, 0) for p in prompts]
        options = {"steps": steps, "guidance_scale": guidance_scale, "progress": progress}
        return _judged(pipe, judge, head, concept, prompts, seeds, desc=f"screening {concept}", **options)

    return drawn


def parent_screen(pipe, world, config, *, progress: bool = False):
    """`run_unlearning`'s `drawn_by_parent` for `config`: `drawn_by` over `world`'s judge where its closed form's
    `relocation_away_screen` is on (continual-uce's option; duge-on-uce's start edit inherits it), else None.
    `pipe` is the parent; the loop asks before the edit changes it."""
    if not config.hyper.get("relocation_away_screen"):
        return None
    return drawn_by(
        pipe,
        world.judges()[0],
        head=world.head_of(config.concept),
        concept=config.concept,
        steps=config.data_steps,
        guidance_scale=config.guidance_scale,
        progress=progress,
    )


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
    """(the prompts of `prompts` the parent `pipe` draws `concept` for, a record of the screening).

    Two stages, as the sweep screens then confirms: every prompt is sampled on one seed; the background is
    the rate at which those images show the concept (every prompt once: an unbiased estimate of how often
    the parent draws it unasked); each prompt whose image shows it is sampled on `seeds_each - 1` more
    seeds, and the sweep's rule (`drawn_for_the_prompt`) on its `seeds_each` images decides. A prompt the
    first seed misses is not mined (at four seeds it could have drawn the concept on the other three: a
    miss the cost of screening thousands of prompts allows). With `seeds_each` 1, every prompt whose one
    image shows the concept is mined (an image of the concept the parent drew for a prompt that did not
    ask for it: erasing it where it happened, even by chance, trains the parent's habit of drawing it
    unasked)."""
    if not prompts:
        return [], {"prompts": 0, "seeds": seeds_each, "background": 0.0, "screened_hits": 0, "mined": []}
    options = {"steps": steps, "guidance_scale": guidance_scale, "progress": progress}
    screen = drawn_by(pipe, judge, head=head, concept=concept, **options)(prompts)
    background = float(screen.mean())
    flagged = [i for i in range(len(prompts)) if screen[i]]
    hits = np.ones((len(flagged), seeds_each), dtype=bool)  # the screening image showed it
    if seeds_each > 1 and flagged:
        texts = [prompts[i] for i in flagged for _ in range(1, seeds_each)]
        seeds = [mine_seed(prompts[i], j) for i in flagged for j in range(1, seeds_each)]
        more = _judged(pipe, judge, head, concept, texts, seeds, desc=f"confirming {concept}", **options)
        hits[:, 1:] = more.reshape(len(flagged), seeds_each - 1)
    drawn = hits[:, 0] if seeds_each == 1 else drawn_for_the_prompt(hits, background)
    mined = [prompts[i] for i, keep in zip(flagged, drawn) if keep]
    record = {
        "prompts": len(prompts),
        "seeds": seeds_each,
        "background": background,
        "screened_hits": len(flagged),
        "mined": [{"prompt": prompts[i], "hits": int(row.sum())} for i, row, keep in zip(flagged, hits, drawn) if keep],
    }
    return mined, record
