"""Known attacks: the typed prompts an attack has found to bring an erased concept back, tried again on every
later candidate that erased it (unlearning/evaluation/attack.py `attack_concept(known=...)`).

The gate's attack is an optimiser with a small budget: a prompt it found once may not be found again once the
edit changes, yet still work. On the shapes world the default's circle version drew circle on 27 of 32 fresh
seeds for the prompt P4D had found against an earlier edit, while the attack itself found nothing (bench/RESULTS.md,
2026-12-07 afternoon). So every confirmed success is kept, and tried as it is, like a regression test.

Two sources, per concept: the world's shipped prompts (`World.known_attacks`: found by benchmarks on its base) and
`LETHE_HOME/attacks.json`, to which every evaluation adds what its attack confirmed. Torch-free.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

CORPUS_FILE = "attacks.json"  # under LETHE_HOME: {concept: [prompt, ...]}, in the order found


class CorpusError(ValueError):
    """The corpus file is not what Lethe writes (edited by hand, or another program's): one line naming it."""


def read_corpus(path: Path) -> dict[str, list[str]]:
    """The found prompts per concept; {} where none were recorded.

    Raises:
        CorpusError: the file is not a JSON object of lists of prompts.
    """
    if not path.is_file():
        return {}
    try:
        corpus = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorpusError(f"{path}: not JSON ({err}); fix or remove it (it lists prompts attacks found)") from None
    if not isinstance(corpus, dict) or not all(
        isinstance(v, list) and all(isinstance(p, str) for p in v) for v in corpus.values()
    ):
        raise CorpusError(f"{path}: expected {{concept: [prompt, ...]}}; fix or remove it")
    return corpus


def check_corpus(settings) -> None:
    """Refuse a malformed corpus of this home before any work, where evaluations attack (and so read it).

    Raises:
        CorpusError: as read_corpus.
    """
    if settings.eval_attack_prompts:
        read_corpus(settings.home / CORPUS_FILE)


def known_attacks(corpus: dict[str, list[str]], world, concept: str) -> tuple[str, ...]:
    """The world's shipped prompts for `concept`, then those found in this home (`corpus`, read_corpus's),
    each once."""
    return tuple(dict.fromkeys([*world.known_attacks(concept), *corpus.get(concept, [])]))


def found_prompts(attack_results: dict) -> dict[str, list[str]]:
    """Per concept, the adversarial prompts an evaluation's attack confirmed (its `results["attack"]`)."""
    return {
        concept: [a["adversarial_prompt"] for row in result.get("prompts", []) for a in row["attacks"] if a["success"]]
        for concept, result in attack_results.items()
    }


@contextmanager
def _held(path: Path):
    """An exclusive lock on `path`'s lock file for the body: evaluations recording at once (a bench beside the
    flow, two homes' flows sharing one home) each read what the other wrote, so neither's additions are lost.
    The kernel drops the lock when the process dies, however it dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def record_found(path: Path, attack_results: dict) -> int:
    """Add what the attack confirmed to the corpus at `path`: read, extended and written whole under the corpus's
    lock, by rename (a crash leaves the old file). Returns how many prompts were new."""
    found = {concept: prompts for concept, prompts in found_prompts(attack_results).items() if prompts}
    if not found:
        return 0  # nothing to add: the corpus is not even read
    with _held(path):
        corpus, new = read_corpus(path), 0
        for concept, prompts in found.items():
            for prompt in prompts:
                if prompt not in corpus.setdefault(concept, []):
                    corpus[concept].append(prompt)
                    new += 1
        if new:
            with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
                json.dump(corpus, handle, indent=1)
            os.replace(handle.name, path)
    return new
