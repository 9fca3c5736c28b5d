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

import json
import os
import tempfile
from pathlib import Path

CORPUS_FILE = "attacks.json"  # under LETHE_HOME: {concept: [prompt, ...]}, in the order found


def read_corpus(path: Path) -> dict[str, list[str]]:
    """The found prompts per concept; {} where none were recorded.

    Raises:
        ValueError: the file is not a JSON object of lists of prompts (one line naming the file).
    """
    if not path.is_file():
        return {}
    try:
        corpus = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(corpus, dict) or not all(
        isinstance(v, list) and all(isinstance(p, str) for p in v) for v in corpus.values()
    ):
        raise ValueError(f"{path}: expected {{concept: [prompt, ...]}}")
    return corpus


def known_attacks(path: Path | None, world, concept: str) -> tuple[str, ...]:
    """The world's shipped prompts for `concept`, then those found in this home, each once."""
    found = read_corpus(path).get(concept, []) if path is not None else []
    return tuple(dict.fromkeys([*world.known_attacks(concept), *found]))


def found_prompts(attack_results: dict) -> dict[str, list[str]]:
    """Per concept, the adversarial prompts an evaluation's attack confirmed (its `results["attack"]`)."""
    return {
        concept: [a["adversarial_prompt"] for row in result.get("prompts", []) for a in row["attacks"] if a["success"]]
        for concept, result in attack_results.items()
    }


def record_found(path: Path, attack_results: dict) -> int:
    """Add what the attack confirmed to the corpus at `path` (written whole, by rename: a crash leaves the old
    file). Returns how many prompts were new. Two evaluations recording at once may lose one's additions (the
    flow evaluates one request at a time under the GPU slot)."""
    found = {concept: prompts for concept, prompts in found_prompts(attack_results).items() if prompts}
    if not found:
        return 0  # nothing to add: the corpus is not even read
    corpus, new = read_corpus(path), 0
    for concept, prompts in found.items():
        for prompt in prompts:
            if prompt not in corpus.setdefault(concept, []):
                corpus[concept].append(prompt)
                new += 1
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            json.dump(corpus, handle, indent=1)
        os.replace(handle.name, path)
    return new
