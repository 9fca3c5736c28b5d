"""Benchmark: forgetting judged against an attacker and across the vocabulary — methods side by side.

    .venv/bin/python bench/attack.py single   [--methods SPEC ...] [--sweep-prompts 384] [--attack-prompts 12]
    .venv/bin/python bench/attack.py sequence [--methods SPEC ...] [--concepts circle striped ...]
    (either: [--attack-steps N] [--json FILE])
    .venv/bin/python bench/attack.py cost     [--methods SPEC ...]
    .venv/bin/python bench/attack.py asr      [--methods SPEC ...] [--concepts circle] [--attack-prompts 12]
                                              [--attack-steps 60] [--attack-seed 0]

A method SPEC is a method name, optionally with hyper-parameters and a label after `@`:
`continual-uce`, `continual-uce:adversarial_rounds=5`, `continual-uce:broad_scale=0@no broad`.

Every candidate is evaluated by the one evaluator (pipeline/evaluator.py) under the shipped policy, with
the sweep and the attack at the sizes given here (the bench's budget is larger than the gate's:
`--sweep-prompts 384 --attack-prompts 12 --attack-steps 60` by default for `single`; the gate's own
for `sequence`), on the same prompts and seeds for every method. `single` erases circle (synonym disc,
preserve ring) from the base with each method and tabulates the evaluation's two diagnostics (RECE's
embedding inversion and a textual inversion, reported, not gated); `sequence` erases ten concepts in turn, each from the
previous step's model, and re-measures every erased concept under sweep and attack at every step;
`cost` times one request's edit (encoding every prompt set, the broad Gram, the solve, the weights) on
a GPU-sized model built from config; `asr` erases each of `--concepts` from the base with each method and
runs only the attack on it (no plan sampled, no sweep, no gate): the ASR at a budget and attacker seed of
one's choosing, in minutes instead of an evaluation's half hour. `cost`'s model is SD1.5's UNet (859.5M
parameters, bench/gpu_step.py's size) under a
768-wide, 12-layer text encoder (BERT-base shape, the MiniLM tokenizer at 77 tokens), random weights.

Prints Markdown tables (paste them into bench/RESULTS.md with the date and machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import method_specs  # noqa: E402  (bench/method_specs.py: this folder is first on sys.path)


# the main job's requests (examples/requests.yaml): synonyms and preserve set of each concept it erases
def setup(args):
    from pipeline.evaluator import Evaluator
    from pipeline.settings import load_settings
    from unlearning.evaluation.attack import AttackBudget
    from unlearning.evaluation.sweep import SweepSize
    from unlearning.sampling import load_model

    os.environ.setdefault("LETHE_HOME", str(Path(tempfile.gettempdir()) / "lethe-bench-home"))
    settings = load_settings()
    evaluator = Evaluator.from_settings(settings)
    if args.sweep_prompts is not None:
        evaluator.sweep = SweepSize(
            vocabulary_prompts=args.sweep_prompts,
            screen_seeds=settings.eval_sweep_seeds,
            leak_seeds=settings.eval_sweep_leak_seeds,
            word_seed=args.sweep_word_seed,
        )
    if args.attack_prompts is not None or args.attack_steps is not None:
        evaluator.attack = replace(
            evaluator.attack or AttackBudget(),
            **({"prompts": args.attack_prompts} if args.attack_prompts is not None else {}),
            **({"steps": args.attack_steps} if args.attack_steps is not None else {}),
        )
    return settings, evaluator, load_model("shapes")


def rate(entry: dict, key: str = "ua") -> str:
    if not entry or not entry.get("n"):
        return "—"
    low, high = entry["wilson"]
    return f"{entry[key]:.2f} ({entry['k']}/{entry['n']}, [{low:.2f}, {high:.2f}])"


def count(entry: dict, key: str = "ua") -> str:
    """A rate with its k/n, without the interval (the sequence's cells hold every erased concept)."""
    return f"{entry[key]:.2f} ({entry['k']}/{entry['n']})" if entry and entry.get("n") else "—"


def concept_cells(checks: dict, concept: str, written=rate) -> tuple[str, str, str]:
    """(relocations confirmed/tested, leak UA, ASR) of one erased concept, the rates `written` by `rate`
    (with the interval) or `count` (k/n only)."""
    sweep = checks.get("sweep", {}).get("concepts", {}).get(concept, {})
    attack = checks.get("attack", {}).get(concept, {})
    relocations = f"{sweep['relocations']}/{sweep['confirmed']}" if sweep else "—"
    leak = sweep.get("leak", {})
    stages = f" (screen {leak['screen']['k']}/{leak['screen']['n']})" if leak.get("screen") else ""
    return relocations, written(leak) + stages, written(attack, "asr")


def broad_cells(checks: dict) -> str:
    broad = checks.get("sweep", {}).get("retention")
    if not broad:
        return "— | — | —"
    shift = broad["shift"]
    # the gate bounds the worst head (the colour head too, which the two columns before it do not show)
    heads = f"{shift['object']:.3f} / {shift['style']:.3f} / {broad['max_shift']:.3f}"
    return f"{broad['distance']:.3f} | {broad['fid']:.2f} | {heads}"


def single(args) -> None:
    settings, evaluator, base = setup(args)
    print(
        f"## One request: erase circle (synonym disc, preserve ring) — {date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores\n"
    )
    print(
        f"Sweep: {evaluator.sweep}; attack: {evaluator.attack}; sampler {evaluator.sampler}. UA and leak: where "
        "the base draws circle (k/n, Wilson 95 %); relocations: confirmed / tested; ASR: prompts drawn before "
        "or after the attack / prompts tried.\n"
    )
    print(
        "| method | UA gate | UA held-out | UA synonyms | relocations | sweep leak UA | attack ASR | broad retention "
        "| broad FID | shift object / style / worst head | objects × | styles × | gate | train s | eval s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for spec in args.methods:
        label, method, hyper, options = method_specs.parse_spec(spec)
        with tempfile.TemporaryDirectory() as tmp:
            payload, trained, evaluated = method_specs.request(
                settings,
                evaluator,
                base,
                "shapes",
                Path(tmp) / "step",
                concept="circle",
                method=method,
                hyper=hyper,
                synonyms=("disc",),
                preserve=("ring",),
                **options,
            )
        c, decision = payload["checks"], payload["decision"]
        forget = c["forget"]
        relocations, leak, asr = concept_cells(c, "circle")
        heads = c["retain"]["by_domain"]
        print(
            f"| {label} | {rate(forget['gate']['where_base_draws'])} | {rate(forget['heldout']['where_base_draws'])} "
            f"| {rate(forget['synonyms']['where_base_draws'])} | {relocations} | {leak} | {asr} | {broad_cells(c)} "
            f"| {heads['object']['relative']:.3f} | {heads['style']['relative']:.3f} "
            f"| {'pass' if decision['passed'] else 'FAIL'} | {trained:.0f} | {evaluated:.0f} |",
            flush=True,
        )
        rows.append({"label": label, "method": method, "hyper": hyper, "options": options, "payload": payload})
    if any("diagnostics" in row["payload"]["checks"] for row in rows):
        print("\nDiagnostics of circle (reported, not gated):\n")
        print("| method | inversion residual | nearest real token (× ‖e‖) | draws with e′ | textual inversion draws |")
        print("|---|---|---|---|---|")
        for row in rows:
            found = row["payload"]["checks"].get("diagnostics", {}).get("circle")
            if not found or not found["textual_inversion"]:
                continue
            inv, ti = found["embedding_inversion"], found["textual_inversion"]
            print(
                f"| {row['label']} | {inv['residual']:.4f} | {inv['nearest_real_token']:.3f} | "
                f"{inv['draws']:.2f} (n {inv['n']}) | {ti['draws']:.2f} (n {ti['n']}) |"
            )
    for row in rows:
        if not row["payload"]["decision"]["passed"]:
            print(f"\n{row['label']} failed: {'; '.join(row['payload']['decision']['reasons'])[:600]}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str) + "\n")


def sequence(args) -> None:
    from pipeline.prepare import load_parent_model

    settings, evaluator, base = setup(args)
    concepts = tuple(args.concepts)
    # what the parent erased (a lineage already under way): judged for rebound at every step, shown in the table
    inherited = () if args.parent == "shapes" else tuple(load_parent_model(settings, args.parent).erased)
    print(f"## Sequence {' → '.join(concepts)} — {date.today()}, {platform.machine()}, {os.cpu_count()} cores\n")
    print(f"Sweep: {evaluator.sweep}; attack: {evaluator.attack}; sampler {evaluator.sampler}.\n")
    print(
        "| method | step | concept | every erased concept: UA where the base draws it / sweep leak UA / relocations "
        "/ ASR | broad retention | broad FID | shift object / style / worst head | objects × | styles × | gate | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for spec in args.methods:
        label, method, hyper, options = method_specs.parse_spec(spec)
        parent, erased = args.parent, inherited
        with tempfile.TemporaryDirectory() as tmp:
            # --keep: each step's model folder stays (to look at its images, or to go on from it)
            folder = Path(args.keep) / label.replace("/", "_") if args.keep else Path(tmp)
            for step, concept in enumerate(concepts, start=1):
                out = folder / f"{step}-{concept}"
                payload, trained, evaluated = method_specs.request(
                    settings,
                    evaluator,
                    base,
                    parent,
                    out,
                    concept=concept,
                    method=method,
                    hyper=hyper,
                    erased=erased,
                    **options,
                )
                c, decision = payload["checks"], payload["decision"]
                cells = []
                for name in (concept, *erased):
                    ua = (c["forget"]["gate"] if name == concept else c["rebound"][name])["where_base_draws"]
                    relocations, leak, asr = concept_cells(c, name, count)
                    cells.append(f"{name} {ua['ua']:.2f} / {leak} / {relocations} / {asr}")
                heads = c["retain"]["by_domain"]
                print(
                    f"| {label} | {step} | {concept} | {'; '.join(cells)} | {broad_cells(c)} "
                    f"| {heads['object']['relative']:.3f} | {heads.get('style', {}).get('relative', float('nan')):.3f} "
                    f"| {'pass' if decision['passed'] else 'FAIL'} | {trained + evaluated:.0f} |",
                    flush=True,
                )
                if not decision["passed"]:
                    print(f"|   |   | failed: {'; '.join(decision['reasons'])[:400]} ||||||||", flush=True)
                rows.append({"label": label, "step": step, "concept": concept, "payload": payload})
                if args.json:  # after every step: a sequence runs for hours, and a stopped one keeps its steps
                    Path(args.json).write_text(json.dumps(rows, indent=1, default=str) + "\n")
                parent, erased = str(out), (*erased, concept)


def cost(args) -> None:
    """Seconds of one request's edit at SD1.5 size on this machine (module docstring)."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipeline.settings import load_settings
    from pipeline.world import world_for
    from unlearning.loop import UnlearnConfig, run_unlearning
    from unlearning.methods import get_method
    from unlearning.shapes.model import sampling_scheduler, text_encoder_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(text_encoder_path(), model_max_length=77, local_files_only=True)
    encoder = BertModel(
        BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12)
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768
    )
    vae = AutoencoderKL(block_out_channels=(32,), norm_num_groups=32)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    base_values = {k: v.clone() for k, v in unet.state_dict().items() if ".attn2.to_" in k}
    parameters = sum(p.numel() for p in unet.parameters()) / 1e6
    settings = load_settings()
    print(f"## One request's edit at SD1.5 size — {date.today()}, {platform.machine()}, {os.cpu_count()} cores\n")
    print(f"UNet {parameters:.1f}M parameters, text encoder 768 × 12 layers, {torch.get_num_threads()} threads.\n")
    print("| method | edit s (encode + broad Gram + solve + weights) | attn2 K/V tensors |")
    print("|---|---|---|")
    for spec in args.methods:
        label, method, hyper, options = method_specs.parse_spec(spec)
        if "relocation_away_screen" in get_method(method).DEFAULTS:  # random weights have no judge: screen off
            hyper = {"relocation_away_screen": 0.0, **hyper}
        config = UnlearnConfig(concept="circle", method=method, hyper=hyper, **options)
        with tempfile.TemporaryDirectory() as tmp:
            with torch.no_grad():  # every run starts from the same base weights
                for name, param in unet.named_parameters():
                    if name in base_values:
                        param.copy_(base_values[name])
            started = time.perf_counter()
            summary = run_unlearning(
                pipe,
                config,
                Path(tmp),
                prompts=world_for(settings).request_prompts(config),
                model_sha="sd15-size-random",
                base_values=base_values,
                progress=False,
            )
            print(f"| {label} | {time.perf_counter() - started:.1f} | {summary['trained_tensors']} |", flush=True)


def asr(args) -> None:
    """The attack alone on one request's candidate (module docstring), per method and concept."""
    from pipeline.world import world_for
    from unlearning.evaluation.attack import AttackBudget, attack_concept
    from unlearning.evaluation.evaluate import attack_prompts
    from unlearning.loop import UnlearnConfig, run_unlearning
    from unlearning.mining import parent_screen
    from unlearning.sampling import load_model

    settings, evaluator, base = setup(args)
    budget = replace(evaluator.attack or AttackBudget(), seed=args.attack_seed)
    world = world_for(settings)
    judge = world.judges()[0]
    print(
        f"## The attack alone, one request from the base — {date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores\n"
    )
    print(f"Attack: {budget}; sampler {evaluator.sampler}. ASR: phrasings drawn before or after the attack / tried.\n")
    print("| method | concept | ASR (k/n, Wilson 95 %) | base ASR | found prompts | edit s | attack s |")
    print("|---|---|---|---|---|---|---|")
    base_values = {k: v.clone() for k, v in base.unet.state_dict().items()}
    rows = []
    for spec in args.methods:
        label, method, hyper, options = method_specs.parse_spec(spec)
        for concept in args.concepts:
            synonyms, preserve = method_specs.MAIN_JOB.get(concept, ((), ()))
            config = UnlearnConfig(
                concept=concept, synonyms=synonyms, preserve=preserve, method=method, hyper=hyper, **options
            )
            candidate = load_model("shapes")
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                run_unlearning(
                    candidate,
                    config,
                    Path(tmp),
                    prompts=world.request_prompts(config),
                    model_sha="shapes",
                    base_values=base_values,
                    progress=False,
                    drawn_by_parent=parent_screen(candidate, world, config),
                )
            edited = time.perf_counter() - started
            plan = evaluator.plan(concept, synonyms=synonyms)
            result, _ = attack_concept(
                candidate,
                base,
                judge,
                head=world.head_of(concept),
                concept=concept,
                prompts=attack_prompts(plan, concept),
                budget=budget,
                sampler=evaluator.sampler,
            )
            found = [a["adversarial_prompt"] for r in result["prompts"] for a in r["attacks"] if a["success"]]
            found = "; ".join(f'"{text}"' for text in found) or "—"
            print(
                f"| {label} | {concept} | {rate(result, 'asr')} | {result['base']['k']}/{result['base']['n']} "
                f"| {found[:300]} | {edited:.0f} | {result['seconds']:.0f} |",
                flush=True,
            )
            rows.append({"label": label, "concept": concept, "attack": result})
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("single", "sequence", "cost", "asr"))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="method specs (module docstring); default: the hardenings and baselines of bench/RESULTS.md",
    )
    parser.add_argument(
        "--concepts", nargs="+", default=None, help="sequence: its requests, in order (default: ten); asr: circle"
    )
    parser.add_argument("--sweep-prompts", type=int, default=None, help="vocabulary prompts of the sweep")
    parser.add_argument(
        "--sweep-word-seed", type=int, default=0, help="which vocabulary words the sweep draws (confirm on others)"
    )
    parser.add_argument("--attack-prompts", type=int, default=None, help="phrasings attacked per concept")
    parser.add_argument("--attack-steps", type=int, default=None, help="optimisation steps per phrasing")
    parser.add_argument("--attack-seed", type=int, default=0, help="asr: the attacker's seed (its initial tokens)")
    parser.add_argument("--json", default=None, help="also write every payload here")
    parser.add_argument(
        "--parent", default="shapes", help="sequence: the model the first request starts from (a model folder)"
    )
    parser.add_argument("--keep", default=None, help="sequence: keep each step's model folder under KEEP/<label>/")
    args = parser.parse_args()
    if args.mode == "single":
        args.methods = args.methods or [
            "continual-uce:broad_scale=0,adversarial_rounds=0@continual-uce, no broad, RECE 0",
            "continual-uce:broad_scale=0@continual-uce, no broad, RECE 2 (before)",
            "continual-uce:broad_scale=0,adversarial_rounds=5@continual-uce, no broad, RECE 5",
            "continual-uce:adversarial_rounds=0@continual-uce, broad, RECE 0",
            "continual-uce@continual-uce, broad, RECE 2 (default)",
            "continual-uce:adversarial_rounds=5@continual-uce, broad, RECE 5",
            "continual-uce:null_space_energy=0.99@continual-uce, broad + null space (SPEED), RECE 2",
            "uce",
            "duge",
            "duge:broad_prompts=256@duge + broad prior preservation",
            "duge-on-uce@duge-on-uce (closed form, then duge with broad preservation and mined prompts)",
            "duge-on-uce:adversarial_epsilon=0.1@duge-on-uce + R.A.C.E. 0.1",
            "esd-x",
        ]
        for name, value in (("sweep_prompts", 384), ("attack_prompts", 12), ("attack_steps", 60)):
            if getattr(args, name) is None:
                setattr(args, name, value)
        single(args)
    elif args.mode == "sequence":
        args.concepts = args.concepts or list(method_specs.SEQUENCE)
        args.methods = args.methods or ["continual-uce", "uce"]
        sequence(args)
    elif args.mode == "asr":
        args.concepts = args.concepts or ["circle"]
        args.methods = args.methods or ["continual-uce", "uce"]
        asr(args)
    else:
        args.methods = args.methods or ["continual-uce", "continual-uce:broad_scale=0@continual-uce, no broad", "uce"]
        cost(args)


if __name__ == "__main__":
    main()
