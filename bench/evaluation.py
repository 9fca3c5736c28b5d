"""Benchmark: the cost of a full gate evaluation on the shapes world, cold and with a warm base cache,
and the throughput of batched sampling.

    .venv/bin/python bench/evaluation.py [--repeats 3] [--erased striped star ...] [--steps N]

A full gate at the gate's size (the settings: 96 images per forget and rebound set, 24 per retained
concept) = the first request's target `circle` (gate, held-out, synonyms) + the concepts `--erased`
earlier (rebound; none for the first request) + every retained concept of both domains. The
candidate is a copy of the base with its attn2 K/V perturbed (the shape of an unlearning delta), so
both models are sampled. Prints a Markdown table with medians. Target (erasure issue): the first
request's gate <= 120 s with the base cache warm, on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from datetime import date

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--erased", nargs="*", default=[], help="concepts erased earlier (rebound sets)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: settings.sample_steps)")
    args = parser.parse_args()

    from pipeline.evaluator import Evaluator
    from pipeline.settings import load_settings
    from unlearning.evaluation.cache import ImageCache
    from unlearning.sampling import generate, load_model, model_identity

    base = load_model("shapes")
    candidate = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in candidate.unet.named_parameters():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    evaluator = Evaluator.from_settings(load_settings())
    args.steps = args.steps or evaluator.sampler["steps"]
    evaluator.sampler = {**evaluator.sampler, "steps": args.steps}
    base_sha = model_identity("shapes")[1]
    plan = evaluator.plan("circle", synonyms=("disc",), erased=tuple(args.erased))

    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            evaluator.cache = ImageCache(tmp)
            started = time.perf_counter()
            evaluator.evaluate(candidate, base, plan, base_sha256=base_sha)
            cold.append(time.perf_counter() - started)
            started = time.perf_counter()
            result = evaluator.evaluate(candidate, base, plan, base_sha256=base_sha)
            warm.append(time.perf_counter() - started)
            assert result.timings["base_images_generated"] == 0

    prompts = [c.prompt for c in plan.cases][:64]
    throughput = []
    for r in range(args.repeats):
        started = time.perf_counter()
        generate(
            base,
            prompts,
            list(range(r * 64, r * 64 + len(prompts))),
            steps=args.steps,
            guidance_scale=evaluator.sampler["guidance_scale"],
        )
        throughput.append(len(prompts) / (time.perf_counter() - started))

    images = len(plan.cases)
    print(
        f"## Evaluation cost — {date.today().isoformat()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print(
        f"Full gate: {images} images per model ({evaluator.size.forget_images} per forget/rebound set, "
        f"{evaluator.size.retain_images} per retained concept; erased earlier: {', '.join(args.erased) or 'none'}), "
        f"DDIM {args.steps} steps, CFG {evaluator.sampler['guidance_scale']}.\n"
    )

    def row(label: str, runs: list[float], unit: str) -> None:
        print(f"| {label} | {statistics.median(runs):.1f} {unit} | {', '.join(f'{x:.1f}' for x in runs)} |")

    print("| measure | median | runs |")
    print("|---|---|---|")
    row("full gate, cold cache (base + candidate sampled)", cold, "s")
    row("full gate, warm base cache (candidate sampled)", warm, "s")
    print(f"| warm / cold | {statistics.median(warm) / statistics.median(cold):.2f} | |")
    row(f"batched sampling (batch {len(prompts)})", throughput, "images/s")
    target = 120.0
    print(f"\nTarget: warm-cache gate < {target:.0f} s — {'met' if statistics.median(warm) < target else 'NOT met'}.")


if __name__ == "__main__":
    main()
