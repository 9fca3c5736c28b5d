"""The `lethe` command line.

Errors are one line on stderr and exit code 2 for bad input (nothing written), 1 for a failure while
working. Every command that reports takes `--json`. Heavy libraries are imported inside the commands
so that `lethe --help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class BadInput(Exception):
    """Input refused before anything is written (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line on stderr (no usage dump) and exit 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse's signature
        raise BadInput(f"{self.prog}: {message}")


def _print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, sort_keys=False, default=str))


def _settings():
    from pydantic import ValidationError

    from flows.settings import load_settings

    try:
        return load_settings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
        raise BadInput(f"invalid settings ({problems})") from None
    except (OSError, ValueError) as error:  # e.g. malformed lethe.toml
        raise BadInput(f"invalid settings: {error}") from None


def _writable_file(path_text: str, suffix: str) -> Path:
    """Check, before any work, that a result can be written at this path."""
    path = Path(path_text)
    if path.suffix.lower() != suffix:
        raise BadInput(f"{path}: the output must be a {suffix} file")
    if path.is_dir():
        raise BadInput(f"{path}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise BadInput(f"{path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BadInput(f"{path}: not writable")
    return path


def _save_atomically(picture, path: Path) -> None:
    """Write beside the target and rename: a crash never leaves a half-written picture."""
    tmp = path.with_name(f".{path.name}.tmp")
    picture.save(tmp, format="PNG")
    os.replace(tmp, path)


# ---------------------------------------------------------------- generate
def cmd_generate(args) -> int:
    settings = _settings()
    out = _writable_file(args.out, ".png")
    if not 1 <= args.n <= 256:
        raise BadInput("--n must be between 1 and 256")
    steps = settings.sample_steps if args.steps is None else args.steps
    if not 1 <= steps <= 1000:
        raise BadInput("--steps must be between 1 and 1000")
    if not 1 <= args.scale <= 32:
        raise BadInput("--scale must be between 1 and 32")
    guidance = settings.guidance_scale if args.guidance is None else args.guidance

    from unlearning.sampling import PromptError, check_prompt, generate, image_grid, load_model, upscale

    if not args.prompt.strip():
        raise BadInput("the prompt is empty")
    model = args.model or settings.base_model
    try:
        pipe = load_model(model, device=settings.resolved_device(), dtype=settings.resolved_dtype())
        check_prompt(pipe.tokenizer, args.prompt)
    except (PromptError, FileNotFoundError) as error:
        raise BadInput(str(error)) from None
    started = time.perf_counter()
    seeds = [args.seed + k for k in range(args.n)]
    images = generate(pipe, [args.prompt] * args.n, seeds, steps=steps, guidance_scale=guidance)
    picture = upscale(image_grid(images, columns=min(args.n, 8)) if args.n > 1 else image_grid(images, 1), args.scale)
    _save_atomically(picture, out)
    result = {"out": str(out), "prompt": args.prompt, "model": model, "seeds": seeds, "steps": steps,
              "guidance_scale": guidance, "seconds": round(time.perf_counter() - started, 2)}
    if args.json:
        _print_json(result)
    else:
        print(f"wrote {out} ({args.n} image{'s' if args.n > 1 else ''}, seeds {seeds[0]}..{seeds[-1]}, {result['seconds']} s)")
    return 0


# ---------------------------------------------------------------- world
def cmd_world_train(args) -> int:
    settings = _settings()
    from dataclasses import replace

    from unlearning.shapes.model import WEIGHTS_DIR
    from unlearning.shapes.train import STAGES, WorldTrainConfig, train_world

    overrides = {k: v for k, v in {"seed": args.seed, "unet_steps": args.unet_steps}.items() if v is not None}
    if any(v < 0 for v in overrides.values()) or overrides.get("unet_steps", 1) == 0:
        raise BadInput("--seed must be >= 0 and --unet-steps > 0")
    config = replace(WorldTrainConfig(), **overrides)
    weights_dir = Path(args.weights_dir) if args.weights_dir else WEIGHTS_DIR
    stages = tuple(args.stage) if args.stage else STAGES
    started = time.perf_counter()
    try:
        summary = train_world(config, weights_dir, settings.home / "world-train", stages=stages, force=args.force)
    except ValueError as error:  # a checkpoint from other options
        raise BadInput(str(error)) from None
    summary["wall_seconds_this_run"] = round(time.perf_counter() - started, 1)
    summary["weights_dir"] = str(weights_dir)
    if args.json:
        _print_json(summary)
    else:
        for stage, result in summary["stages"].items():
            print(f"{stage:9s} {json.dumps(result)}")
        print(f"weights in {weights_dir} ({summary['wall_seconds_this_run']} s this run)")
    return 0


def _format_accuracy(row: dict, heads=("object", "style", "colour")) -> str:
    return "  ".join(f"{h} {row[h]:.3f}" for h in heads if h in row)


def cmd_world_eval(args) -> int:
    settings = _settings()
    if not 1 <= args.colours <= 6:
        raise BadInput("--colours must be between 1 and 6")
    steps = settings.sample_steps if args.steps is None else args.steps
    if not 1 <= steps <= 1000:
        raise BadInput("--steps must be between 1 and 1000")
    guidance = settings.guidance_scale if args.guidance is None else args.guidance
    report_dir = Path(args.report) if args.report else settings.home / "reports" / "world"

    from unlearning.sampling import load_model
    from unlearning.shapes.train import load_detector
    from unlearning.shapes.world_eval import combination_grid, evaluate_world

    try:
        detector = load_detector()
        pipe = load_model(args.model or settings.base_model, device=settings.resolved_device(), dtype=settings.resolved_dtype())
    except FileNotFoundError as error:
        raise BadInput(str(error)) from None
    report_dir.mkdir(parents=True, exist_ok=True)
    numbers, pictures = evaluate_world(pipe, detector, steps=steps, guidance_scale=guidance, colours_per_combination=args.colours)
    for split, images in pictures.items():
        _save_atomically(combination_grid(images, args.colours), report_dir / f"grid-{split}.png")
    numbers["report"] = str(report_dir)
    (report_dir / "world-eval.json").write_text(json.dumps(numbers, indent=2) + "\n")
    if args.json:
        _print_json(numbers)
        return 0
    print(f"detector, clean renders     {_format_accuracy(numbers['detector'])}")
    print(f"detector, degraded renders  {_format_accuracy(numbers['detector_degraded'])}")
    for split, row in numbers["base"].items():
        print(f"base, {split:22s}{_format_accuracy(row)}  ({row['images']} images)")
    print(f"targets met: {json.dumps(numbers['meets_targets'])}")
    print(f"grids and JSON in {report_dir} ({numbers['wall_seconds']} s)")
    return 0


def cmd_world_export(args) -> int:
    out = Path(args.dir)
    if out.exists() and any(out.iterdir()):
        raise BadInput(f"{out}: exists and is not empty")
    from unlearning.shapes.model import export_diffusers, load_shapes_pipeline

    try:
        pipe = load_shapes_pipeline(device="cpu")  # fp32 on disk, whatever the serving dtype
    except FileNotFoundError as error:
        raise BadInput(str(error)) from None
    export_diffusers(pipe, out)
    result = {"out": str(out), "loads_with": "diffusers.StableDiffusionPipeline.from_pretrained"}
    _print_json(result) if args.json else print(f"wrote a diffusers directory to {out}")
    return 0


# ---------------------------------------------------------------- evaluate
def _load_for_evaluation(settings, model: str | None):
    """(candidate pipeline, base pipeline, base model id, base sha256, label) for --model."""
    from unlearning.sampling import load_model, model_identity

    if model and model.startswith("models:/"):
        from registry.loading import load_pipeline

        candidate = load_pipeline(model, tracking_uri=settings.mlflow_tracking_uri)
        base_model = candidate.lethe_version["base_model"]
        base_id, base_sha = model_identity(base_model)
        return candidate, load_model(base_model), base_id, base_sha, model
    base_id, base_sha = model_identity(settings.base_model)
    base = load_model(settings.base_model)
    if model is None or model == settings.base_model or Path(model).resolve() == Path(base_id).resolve():
        return base, base, base_id, base_sha, base_id
    return load_model(model), base, base_id, base_sha, model


def _prompts_from_file(path_text: str) -> list[str]:
    path = Path(path_text)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text file") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise BadInput(f"{path}: no prompts (one per line)")
    return prompts


def cmd_evaluate(args) -> int:
    settings = _settings()
    if not 1 <= args.samples <= 64:
        raise BadInput("--samples must be between 1 and 64")
    prompts = list(args.prompt or []) + (_prompts_from_file(args.prompts_file) if args.prompts_file else [])
    if any(not p.strip() for p in prompts):
        raise BadInput("a prompt is empty")
    report_dir = Path(args.report) if args.report else settings.home / "reports" / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}"
    if report_dir.exists() and not report_dir.is_dir():
        raise BadInput(f"{report_dir}: exists and is not a folder")

    from unlearning.evaluation.gates import PolicyError, load_policy
    from unlearning.evaluation.plan import shapes_plan

    try:
        plan = shapes_plan(args.target, synonyms=tuple(args.synonym or ()), erased=tuple(args.erased or ()), samples=args.samples)
        policy = load_policy(args.policy) if (args.policy or args.target) else None
    except (ValueError, PolicyError) as error:
        raise BadInput(str(error)) from None

    from unlearning.evaluation.cache import ImageCache
    from unlearning.evaluation.checks import ClipScorer, ShapesJudge, drift, lpips_alex_distance, probe_prompts
    from unlearning.evaluation.evaluate import evaluate
    from unlearning.evaluation.report import write_report
    from unlearning.sampling import PromptError, check_prompt, generate, use_scheduler
    from unlearning.shapes.train import load_detector

    try:
        candidate, base, base_id, base_sha, label = _load_for_evaluation(settings, args.model)
        for prompt in prompts:
            check_prompt(candidate.tokenizer, prompt)
        use_scheduler(candidate, args.scheduler)
        use_scheduler(base, args.scheduler)
    except (FileNotFoundError, PromptError, *_refusal_types()) as error:
        raise BadInput(str(error)) from None
    judge = ShapesJudge(load_detector())
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise BadInput("--steps must be between 1 and 1000")
    sampler = {"scheduler": args.scheduler, "steps": settings.sample_steps if args.steps is None else args.steps,
               "guidance_scale": settings.guidance_scale if args.guidance is None else args.guidance}
    drift_value = None if candidate is base else drift(candidate.unet, base.unet)
    evaluation = evaluate(candidate, base, judge, plan, sampler=sampler, base_sha256=base_sha,
                          cache=ImageCache(settings.home / "cache" / "images"), policy=policy,
                          drift_value=drift_value, lpips_distance=lpips_alex_distance(),
                          clip_scorer=ClipScorer(settings.clip_model) if settings.clip_model else None)
    probes = []
    if prompts:
        seeds = [900_000 + k for _ in prompts for k in range(args.samples)]
        expanded = [p for p in prompts for _ in range(args.samples)]
        images = generate(candidate, expanded, seeds, steps=sampler["steps"], guidance_scale=sampler["guidance_scale"])
        probes = probe_prompts(judge, prompts, images, args.samples)
    extra = {"model": label, "base_model": base_id, "base_sha256": base_sha, "sampler": sampler, "prompts": probes,
             "report": str(report_dir)}
    html_path = write_report(evaluation, report_dir, title=f"Lethe evaluation of {label}", extra=extra)
    if args.json:
        from unlearning.evaluation.report import evaluation_payload

        _print_json(evaluation_payload(evaluation, extra))
    else:
        _print_evaluation(evaluation, probes, html_path)
    return 0


def _print_evaluation(evaluation, probes, html_path) -> None:
    checks = evaluation.results
    if "forget" in checks:
        print("forget UA      " + "  ".join(f"{k} {v['ua']:.3f}" for k, v in checks["forget"].items()))
    for concept, value in checks.get("rebound", {}).items():
        print(f"rebound UA     {concept} {value['ua']:.3f}")
    retain = checks["retain"]
    print(f"retain         IRA {retain['ira']['accuracy']:.3f} ({retain['ira']['relative']:.3f} x base)  "
          f"CRA {retain['cra']['accuracy']:.3f} ({retain['cra']['relative']:.3f} x base)")
    print(f"retention      distance {checks['retention']['distance']:.4f}   FID {checks['fid']['fid']:.3f}  KID {checks['fid']['kid']:.4f}")
    print(f"alignment      {checks['alignment']['candidate']:.3f} (base {checks['alignment']['base']:.3f})"
          + (f"   drift {checks['drift']:.4f}" if "drift" in checks else ""))
    for probe in probes:
        tops = "  ".join(f"{head}: {max(rates, key=rates.get)} {max(rates.values()):.2f}" for head, rates in probe["top1"].items())
        print(f"prompt         {probe['prompt']!r} ({probe['samples']} samples)  {tops}")
    if evaluation.decision is not None:
        print("gate           " + ("PASSED" if evaluation.decision.passed else "FAILED: " + "; ".join(evaluation.decision.reasons)))
    print(f"report         {html_path}")


# ---------------------------------------------------------------- unlearn
def cmd_unlearn(args) -> int:
    import shutil
    import tempfile

    settings = _settings()
    from unlearning.loop import CHECKPOINT_FILE, SUMMARY_FILE, UnlearnConfig

    config = UnlearnConfig(
        concept=args.concept, synonyms=tuple(args.synonym or ()), anchor=args.anchor, preserve=tuple(args.preserve or ()),
        erased=tuple(args.erased or ()), method=args.method, params=args.params,
        steps=args.steps if args.steps is not None else UnlearnConfig.steps, seed=args.seed,
        gradient_surgery=args.gradient_surgery, domain_correction=args.domain_correction, compile=args.compile,
    )
    try:
        config.validate()
    except ValueError as error:
        raise BadInput(str(error)) from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / CHECKPOINT_FILE).is_file():
        what = "holds a finished run" if (out / SUMMARY_FILE).is_file() else "is not empty"
        raise BadInput(f"{out}: {what}; choose another --out (a folder with a checkpoint resumes)")
    if not 1 <= args.eval_samples <= 64:
        raise BadInput("--eval-samples must be between 1 and 64")

    from unlearning.evaluation.cache import ImageCache
    from unlearning.evaluation.checks import ShapesJudge, drift, lpips_alex_distance
    from unlearning.evaluation.evaluate import evaluate
    from unlearning.evaluation.gates import load_policy
    from unlearning.evaluation.plan import shapes_plan
    from unlearning.evaluation.report import evaluation_payload, write_report
    from unlearning.loop import run_unlearning
    from unlearning.sampling import load_model
    from unlearning.shapes.train import load_detector

    try:
        plan = shapes_plan(config.concept, synonyms=config.synonyms, erased=config.erased, samples=args.eval_samples)
    except ValueError:
        plan = None  # not a shapes-world concept: train, but the shapes gate cannot judge it
    with tempfile.TemporaryDirectory(prefix="lethe-unlearn-") as tmp:
        from registry.loading import load_parent

        try:
            loaded = load_parent(args.model or settings.base_model, tracking_uri=settings.mlflow_tracking_uri, workdir=Path(tmp))
        except (FileNotFoundError, *_refusal_types()) as error:
            raise BadInput(str(error)) from None
        parent, base_model, base_sha, ancestors = loaded.pipe, loaded.base_model, loaded.base_sha256, loaded.ancestors
        base = load_model(base_model)
        base_values = {k: v.clone() for k, v in base.unet.state_dict().items()}
        out.mkdir(parents=True, exist_ok=True)
        if ancestors:
            (out / "parents").mkdir(exist_ok=True)
            for index, path in enumerate(ancestors):
                shutil.copyfile(path, out / "parents" / f"{index:03d}-delta.safetensors")
    metadata = {"base_model": base_model, "base_sha256": base_sha, "parent_model": args.model or settings.base_model}
    summary = run_unlearning(parent, config, out, model_sha=loaded.identity, base_values=base_values,
                             cache_dir=settings.home / "cache" / "latents", metadata=metadata, progress=not args.json)
    evaluation_json = None
    if plan is not None:
        evaluation = evaluate(parent, base, ShapesJudge(load_detector()), plan,
                              sampler={"scheduler": "ddim", "steps": settings.sample_steps, "guidance_scale": settings.guidance_scale},
                              base_sha256=base_sha, cache=ImageCache(settings.home / "cache" / "images"), policy=load_policy(),
                              drift_value=drift(parent.unet, base.unet), lpips_distance=lpips_alex_distance())
        write_report(evaluation, out / "report", title=f"Lethe: erase {config.concept} ({config.method})")
        evaluation_json = evaluation_payload(evaluation)
        summary["evaluation"] = evaluation_json
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    result = {"out": str(out), "delta": summary["delta"], "seconds": summary["seconds"], "evaluation": evaluation_json}
    if args.json:
        _print_json(result)
    else:
        print(f"wrote {summary['delta']} ({summary['trained_parameters']} trained parameters, {summary['seconds']} s)")
        if evaluation_json:
            checks, decision = evaluation_json["checks"], evaluation_json["decision"]
            print("forget UA  " + "  ".join(f"{k} {v['ua']:.3f}" for k, v in checks["forget"].items()))
            print(f"retain     IRA {checks['retain']['ira']['relative']:.3f} x base   CRA {checks['retain']['cra']['relative']:.3f} x base")
            print("gate       " + ("PASSED" if decision["passed"] else "FAILED: " + "; ".join(decision["reasons"])))
            print(f"report     {out / 'report' / 'report.html'}")
    return 0


# ---------------------------------------------------------------- run (the main job)
def _prefect_environment(settings) -> None:
    """Prefect's state under LETHE_HOME (embedded: its ephemeral API), quiet unless asked."""
    if "PREFECT_HOME" not in os.environ:  # Prefect creates its home only when the parent exists
        (settings.home / "prefect").mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str((settings.home / "prefect").resolve())
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def cmd_run(args) -> int:
    settings = _settings()
    if args.max is not None and args.max < 1:
        raise BadInput("--max must be >= 1")
    if args.unlearn_steps is not None and args.unlearn_steps < 0:
        raise BadInput("--unlearn-steps must be >= 0")
    submitted = []
    if args.requests:
        specs = _specs_from_yaml(args.requests)
        try:
            submitted = _ledger(settings).submit_many(specs, lineage=settings.model_name)
        except _refusal_types() as error:
            raise BadInput(str(error)) from None
    _prefect_environment(settings)
    if submitted:
        _announce(settings, submitted)  # a served drainer (lethe serve) may take them; this run waits for its lineage
        submitted = [r.id for r in submitted]
    started = time.perf_counter()
    from flows.continual import continual_unlearning

    results = continual_unlearning(max_requests=args.max, auto_approve=args.auto_approve, unlearn_steps=args.unlearn_steps)
    registry = _registry(settings)
    from registry.versions import PRODUCTION

    production = registry.alias_version(PRODUCTION)
    payload = {"submitted": submitted, "requests": results, "seconds": round(time.perf_counter() - started, 1),
               "production": {"version": production, "erased": registry.erased_in(production)}}
    if args.json:
        _print_json(payload)
        return 0
    print(f"{'request':28s} {'concept':10s} {'parent':>6s} {'cand.':>5s}  {'UA gate':>7s} {'UA syn':>6s} {'IRA':>5s} {'CRA':>5s}  state")
    for r in results:
        m = r.get("metrics", {})
        cells = [m.get("forget.gate.ua"), m.get("forget.synonyms.ua"), m.get("retain.ira.relative"), m.get("retain.cra.relative")]
        shown = [f"{c:.2f}" if isinstance(c, float) else "-" for c in cells]
        print(f"{r['id']:28s} {r['concept']:10s} {str(r.get('parent_version')):>6s} {str(r.get('candidate_version')):>5s}  "
              f"{shown[0]:>7s} {shown[1]:>6s} {shown[2]:>5s} {shown[3]:>5s}  {r['state']}"
              + (f" ({'; '.join(r['gate_reasons'])})" if r.get("gate_reasons") and r["state"] == "rejected" else "")
              + (f" ({r['error']})" if r.get("error") else ""))
        if r.get("report"):
            print(f"{'':28s} report: {r['report']}")
    prod = payload["production"]
    print(f"production: {'none' if prod['version'] is None else 'version ' + str(prod['version'])}; erased: "
          f"{', '.join(prod['erased']) or '-'} ({payload['seconds']} s)")
    return 0


# ---------------------------------------------------------------- audit and serve
def cmd_audit(args) -> int:
    settings = _settings()
    from unlearning.evaluation.gates import PolicyError, load_policy

    try:
        load_policy(settings.policy)
    except PolicyError as error:
        raise BadInput(str(error)) from None
    _prefect_environment(settings)
    from flows.audit import erosion_audit

    result = erosion_audit()
    if args.json:
        _print_json(result)
    elif result["version"] is None:
        print(f"{settings.model_name} has no production version: nothing to audit")
    else:
        print(f"erosion audit of {settings.model_name} version {result['version']} (erased: {', '.join(result['erased']) or '-'}): "
              + ("PASSED" if result["passed"] else "FAILED"))
        for check in result["checks"]:
            value = "-" if check["value"] is None else f"{check['value']:.4f}"
            bound = " ".join(p for p in (f">= {check['min']}" if check["min"] is not None else "",
                                         f"<= {check['max']}" if check["max"] is not None else "") if p)
            print(f"  {check['metric']:36s} {value:>8s}  {bound:12s} {'pass' if check['passed'] else 'FAIL'}")
        print(f"report: {result['report_html']}")
    return 0 if result["passed"] else EXIT_FAILED


def cmd_serve(args) -> int:
    settings = _settings()
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise BadInput("`lethe serve` needs a Prefect server for its schedules and events: set PREFECT_API_URL "
                       "(e.g. http://127.0.0.1:4200/api after `prefect server start`)")
    from flows.serve import deployments, describe, serve_deployments

    served = deployments(settings)
    if args.json:
        _print_json({"api_url": api_url, "deployments": describe(served)})
    else:
        for row in describe(served):
            print(f"serving {row['deployment']}: cron {', '.join(row['schedules'])}"
                  + (f"; on {', '.join(e for t in row['triggers'] for e in t)}" if row["triggers"] else ""))
        print(f"Prefect API {api_url}; Ctrl-C stops (and pauses the schedules)")
    sys.stdout.flush()
    serve_deployments(served)
    return 0


# ---------------------------------------------------------------- requests and governance
def _ledger(settings):
    from registry.ledger import Ledger

    return Ledger(settings.ledger_url)


def _registry(settings):
    import logging

    from registry.versions import ModelRegistry

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (DB migrations) are noise here
    logging.getLogger("alembic").setLevel(logging.WARNING)

    return ModelRegistry(settings.mlflow_tracking_uri, settings.model_name, settings.artifact_root)


def _refusal_types() -> tuple[type[Exception], ...]:
    """Exceptions that mean "refused, nothing changed": reported as one line with exit 2."""
    from registry.integrity import IntegrityError
    from registry.ledger import LedgerError
    from registry.versions import PromotionRefused

    return (LedgerError, PromotionRefused, IntegrityError, LookupError, ValueError)


def _specs_from_yaml(path_text: str) -> list:
    """Read `lethe submit -f`: a YAML list of requests, or a mapping with a `requests` list."""
    import yaml

    from registry.ledger import RequestSpec

    path = Path(path_text)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        document = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: malformed YAML ({str(error).splitlines()[0]})") from None
    entries = document.get("requests") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"{path}: expected a non-empty list of requests (or a 'requests:' list)")
    allowed = {"concept", "requester", "synonyms", "anchor", "preserve", "method", "reason", "id"}
    specs, problems = [], []
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            problems.append(f"request {i}: not a mapping")
            continue
        if unknown := sorted(set(entry) - allowed):
            problems.append(f"request {i}: unknown field(s) {', '.join(unknown)}")
            continue
        lists = {k: entry.get(k) or [] for k in ("synonyms", "preserve")}
        if any(not isinstance(v, list) for v in lists.values()):
            problems.append(f"request {i}: synonyms and preserve must be lists")
            continue
        specs.append(RequestSpec(
            concept=str(entry.get("concept", "")), requester=str(entry.get("requester", "")),
            synonyms=tuple(map(str, lists["synonyms"])), anchor=str(entry.get("anchor", "") or ""),
            preserve=tuple(map(str, lists["preserve"])), method=str(entry.get("method", "duge")),
            reason=str(entry.get("reason", "") or ""), id=None if entry.get("id") is None else str(entry["id"]),
        ))
    if problems:
        raise BadInput(f"{path}: " + "; ".join(problems))
    return specs


def cmd_submit(args) -> int:
    settings = _settings()
    from registry.ledger import RequestSpec

    if args.file:
        if args.concept is not None:
            raise BadInput("give either -f FILE or --concept, not both")
        specs = _specs_from_yaml(args.file)
    else:
        if args.concept is None or args.requester is None:
            raise BadInput("--concept and --requester are required (or -f FILE)")
        specs = [RequestSpec(
            concept=args.concept, requester=args.requester, synonyms=tuple(args.synonym or ()),
            anchor=args.anchor or "", preserve=tuple(args.preserve or ()), method=args.method,
            reason=args.reason or "", id=args.id,
        )]
    try:
        submitted = _ledger(settings).submit_many(specs, lineage=settings.model_name)
    except _refusal_types() as error:
        raise BadInput(str(error)) from None
    event = _announce(settings, submitted)
    if args.json:
        _print_json({"submitted": [{"id": r.id, "seq": r.seq, "concept": r.concept} for r in submitted], "event": event})
    else:
        for request in submitted:
            print(request.id)
    return 0


def _announce(settings, submitted) -> str:
    """`lethe.request.submitted` for each request, after the ledger write; a failed send is a warning."""
    from flows.events import REQUEST_SUBMITTED, announce_submitted

    event = announce_submitted(settings.model_name, [r.as_dict() for r in submitted])
    if event.startswith("not sent"):
        print(f"lethe: warning: {REQUEST_SUBMITTED} {event}; the drainer's schedule will pick the request up",
              file=sys.stderr)
    return event


def _resume_paused_request(settings, request_id: str, decision: dict) -> bool:
    """If a flow run paused for this request's approval (the ledger records its id), hand it the
    answer through the Prefect API and wait until the ledger shows the outcome. Returns False when
    no flow run is waiting, so the decision is applied directly."""
    from uuid import UUID

    from registry.governance import check_approver

    ledger = _ledger(settings)
    request = ledger.get(request_id)
    if request.state != "awaiting-approval":
        return False
    waiting = [h["detail"] for h in ledger.history(request_id)
               if h["to_state"] == "awaiting-approval" and h["detail"].get("flow_run_id")]
    if not waiting or _paused_process_gone(waiting[-1]):
        return False
    check_approver(decision["approver"], settings.approvers, request.requester)  # refuse before resuming
    _prefect_environment(settings)
    from prefect.flow_runs import resume_flow_run

    try:
        resume_flow_run(UUID(waiting[-1]["flow_run_id"]), run_input=decision)
    except Exception:  # noqa: BLE001 - the run is gone (crashed or cancelled): decide directly
        return False
    deadline = time.time() + 300
    while time.time() < deadline and ledger.get(request_id).state == "awaiting-approval":
        time.sleep(1)
    # A run that took the answer decides within seconds; one that did not is dead without Prefect
    # knowing (killed elsewhere): decide directly. Every ledger change is a compare-and-set, so a late
    # run and this command cannot both decide.
    return ledger.get(request_id).state != "awaiting-approval"


def _paused_process_gone(waiting: dict) -> bool:
    """True when the paused run ran on this machine and its process has died (SIGKILL, a crash): no
    one will take an answer handed to that run (Prefect still shows it paused)."""
    import socket

    if waiting.get("host") != socket.gethostname() or not waiting.get("pid"):
        return False
    try:
        os.kill(int(waiting["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def cmd_approve(args) -> int:
    settings = _settings()
    from registry.governance import approve

    try:
        decision = {"approve": True, "approver": args.approver, "comment": args.comment or ""}
        if _resume_paused_request(settings, args.id, decision):
            request = _ledger(settings).get(args.id)
            result = {"id": args.id, "state": request.state, "production_version": request.candidate_version if request.state == "promoted" else None, "via": "prefect"}
            _print_json(result) if args.json else print(f"{args.id}: {request.state} (answered the paused flow run)")
            return 0 if request.state == "promoted" else EXIT_FAILED
        version = approve(_ledger(settings), _registry(settings), args.id, approver=args.approver,
                          approvers=settings.approvers, comment=args.comment or "")
    except _refusal_types() as error:
        raise BadInput(str(error)) from None
    result = {"id": args.id, "state": "promoted", "production_version": version}
    _print_json(result) if args.json else print(f"{args.id}: promoted; production is now version {version}")
    return 0


def cmd_reject(args) -> int:
    settings = _settings()
    from registry.governance import reject

    try:
        decision = {"approve": False, "approver": args.approver, "comment": args.reason}
        if args.reason.strip() and _resume_paused_request(settings, args.id, decision):
            state = _ledger(settings).get(args.id).state
            _print_json({"id": args.id, "state": state, "via": "prefect"}) if args.json else print(f"{args.id}: {state} (answered the paused flow run)")
            return 0 if state == "rejected" else EXIT_FAILED
        reject(_ledger(settings), _registry(settings), args.id, approver=args.approver,
               approvers=settings.approvers, reason=args.reason)
    except _refusal_types() as error:
        raise BadInput(str(error)) from None
    _print_json({"id": args.id, "state": "rejected"}) if args.json else print(f"{args.id}: rejected")
    return 0


def cmd_rollback(args) -> int:
    settings = _settings()
    from registry.governance import rollback

    if args.to < 1:
        raise BadInput("--to must be a version number >= 1")
    try:
        previous = rollback(_ledger(settings), _registry(settings), to_version=args.to, approver=args.approver,
                            approvers=settings.approvers, reason=args.reason or "")
    except _refusal_types() as error:
        raise BadInput(str(error)) from None
    result = {"production_version": args.to, "previous_production_version": previous}
    _print_json(result) if args.json else print(f"production: version {previous} -> version {args.to}")
    return 0


def cmd_export(args) -> int:
    settings = _settings()
    out = Path(args.dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"{out}: exists and is not an empty folder")
    from registry.loading import load_pipeline

    uri = args.version if args.version.startswith("models:/") else f"models:/{settings.model_name}/{args.version}"
    try:
        pipe = load_pipeline(uri, tracking_uri=settings.mlflow_tracking_uri)
    except _refusal_types() as error:
        raise BadInput(str(error)) from None
    pipe.save_pretrained(out, safe_serialization=True)
    result = {"out": str(out), "uri": uri, **pipe.lethe_version}
    _print_json(result) if args.json else print(f"wrote {uri} (erased: {', '.join(pipe.lethe_version['erased'])}) to {out}")
    return 0


def cmd_history(args) -> int:
    settings = _settings()
    try:
        trail = _ledger(settings).history(args.id)
    except _refusal_types() as error:
        raise BadInput(str(error)) from None
    if args.json:
        _print_json({"history": trail})
        return 0
    for event in trail:
        change = f"{event['from_state'] or '-'} -> {event['to_state']}" if event["event"] == "state" else event["event"]
        print(f"{event['at']}  {event['request_id'] or '':24s} {change:32s} by {event['actor']}  {json.dumps(event['detail'])}")
    return 0


# ---------------------------------------------------------------- status
def cmd_status(args) -> int:
    settings = _settings()
    from registry.versions import PRODUCTION
    from unlearning.shapes.model import WEIGHTS_DIR, weights_available, weights_sha256

    registry = _registry(settings)
    production = registry.alias_version(PRODUCTION)
    requests = _ledger(settings).requests(settings.model_name)
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file()) if WEIGHTS_DIR.is_dir() else 0
    result = {
        "production": {"version": production, "erased": registry.erased_in(production)},
        "requests": [
            {"id": r.id, "seq": r.seq, "concept": r.concept, "state": r.state, "requester": r.requester,
             "parent_version": r.parent_version, "candidate_version": r.candidate_version, "error": r.error}
            for r in requests
        ],
        "settings": settings.shown(),
        "shapes_world": {
            "weights_dir": str(WEIGHTS_DIR),
            "trained": weights_available(),
            "bytes": size,
            "sha256": weights_sha256() if weights_available() else None,
        },
    }
    if args.json:
        _print_json(result)
        return 0
    prod = result["production"]
    print(f"production: {'none' if prod['version'] is None else 'version ' + str(prod['version'])}"
          f"  erased: {', '.join(prod['erased']) or '-'}")
    print(f"requests ({len(requests)}):")
    for r in result["requests"]:
        print(f"  {r['seq']:4d}  {r['id']:28s} {r['state']:18s} {r['concept']}"
              + (f"  candidate v{r['candidate_version']}" if r["candidate_version"] else ""))
    print("settings:")
    for key, value in result["settings"].items():
        print(f"  {key:22s}{value}")
    world = result["shapes_world"]
    print(f"  {'shapes weights':22s}{world['weights_dir']} ({world['bytes'] / 1e6:.1f} MB, trained: {world['trained']})")
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lethe", description="Continual concept unlearning for text-to-image models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    status = commands.add_parser("status", help="the queue, the production version and the settings")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)

    run = commands.add_parser("run", help="the main job: submit requests (optional) and drain the queue")
    run.add_argument("--requests", default=None, help="a YAML list of requests to submit first")
    run.add_argument("--auto-approve", action="store_true", help="approve passing candidates by the auto-approval policy (demo)")
    run.add_argument("--max", type=int, default=None, help="process at most N requests")
    run.add_argument("--unlearn-steps", type=int, default=None, help="training steps per request (default: the method's)")
    run.add_argument("--json", action="store_true", help="print JSON")
    run.set_defaults(func=cmd_run)

    audit = commands.add_parser("audit", help="erosion audit of production: every erased concept and the retain set, against the gate policy")
    audit.add_argument("--json", action="store_true", help="print JSON")
    audit.set_defaults(func=cmd_audit)

    serve_cmd = commands.add_parser("serve", help="serve the drainer (cron + submit events) and the audit (cron) on a Prefect server")
    serve_cmd.add_argument("--json", action="store_true", help="print what is served as JSON, then serve")
    serve_cmd.set_defaults(func=cmd_serve)

    submit = commands.add_parser("submit", help="queue a removal request (or several with -f FILE)")
    submit.add_argument("-f", "--file", default=None, help="a YAML list of requests")
    submit.add_argument("--concept", default=None, help="the concept to remove")
    submit.add_argument("--requester", default=None, help="who asks")
    submit.add_argument("--synonym", action="append", help="another name of the concept (repeatable)")
    submit.add_argument("--anchor", default=None, help="what the concept should become (default: empty prompt)")
    submit.add_argument("--preserve", action="append", help="a related concept to keep (repeatable)")
    submit.add_argument("--method", default="duge", help="unlearning method (default duge)")
    submit.add_argument("--reason", default=None, help="why (takedown reference, ...)")
    submit.add_argument("--id", default=None, help="request id (default: generated)")
    submit.add_argument("--json", action="store_true", help="print JSON")
    submit.set_defaults(func=cmd_submit)

    approve_cmd = commands.add_parser("approve", help="approve a candidate: it becomes production")
    approve_cmd.add_argument("id", help="request id")
    approve_cmd.add_argument("--approver", required=True, help="who approves (must be on settings.approvers)")
    approve_cmd.add_argument("--comment", default=None)
    approve_cmd.add_argument("--json", action="store_true", help="print JSON")
    approve_cmd.set_defaults(func=cmd_approve)

    reject_cmd = commands.add_parser("reject", help="reject a candidate")
    reject_cmd.add_argument("id", help="request id")
    reject_cmd.add_argument("--approver", required=True, help="who rejects (must be on settings.approvers)")
    reject_cmd.add_argument("--reason", required=True)
    reject_cmd.add_argument("--json", action="store_true", help="print JSON")
    reject_cmd.set_defaults(func=cmd_reject)

    rollback_cmd = commands.add_parser("rollback", help="point production back at an earlier approved version")
    rollback_cmd.add_argument("--to", type=int, required=True, help="version number")
    rollback_cmd.add_argument("--approver", required=True)
    rollback_cmd.add_argument("--reason", default=None)
    rollback_cmd.add_argument("--json", action="store_true", help="print JSON")
    rollback_cmd.set_defaults(func=cmd_rollback)

    export_cmd = commands.add_parser("export", help="write a registered version as a complete diffusers directory")
    export_cmd.add_argument("version", help="version number or models:/ URI")
    export_cmd.add_argument("dir", help="an empty or new folder")
    export_cmd.add_argument("--json", action="store_true", help="print JSON")
    export_cmd.set_defaults(func=cmd_export)

    history = commands.add_parser("history", help="the audit trail")
    history.add_argument("--id", default=None, help="only this request")
    history.add_argument("--json", action="store_true", help="print JSON")
    history.set_defaults(func=cmd_history)

    gen = commands.add_parser("generate", help="generate an image (a grid when --n > 1)")
    gen.add_argument("--prompt", required=True, help="the text prompt")
    gen.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    gen.add_argument("--n", type=int, default=1, help="how many images (a grid when > 1)")
    gen.add_argument("--steps", type=int, default=None, help="sampler steps (default: settings.sample_steps)")
    gen.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    gen.add_argument("--model", default=None, help="'shapes' (default), or a diffusers directory")
    gen.add_argument("--scale", type=int, default=4, help="nearest-neighbour enlargement of the PNG (default 4)")
    gen.add_argument("--out", required=True, help="the PNG to write")
    gen.add_argument("--json", action="store_true", help="print JSON")
    gen.set_defaults(func=cmd_generate)

    ev_cmd = commands.add_parser("evaluate", help="erosion checks of a model against the base, with a gate")
    ev_cmd.add_argument("--model", default=None, help="'shapes' (default), a diffusers directory, or models:/NAME@ALIAS|/N")
    ev_cmd.add_argument("--target", default=None, help="the concept that should be gone")
    ev_cmd.add_argument("--synonym", action="append", help="another name of the target (repeatable)")
    ev_cmd.add_argument("--erased", action="append", help="a concept erased earlier (repeatable): rebound check")
    ev_cmd.add_argument("--prompt", action="append", help="probe this prompt too (repeatable)")
    ev_cmd.add_argument("--prompts-file", default=None, help="probe prompts, one per line")
    ev_cmd.add_argument("--samples", type=int, default=6, help="images per concept and per probe prompt")
    ev_cmd.add_argument("--policy", default=None, help="gate policy YAML (default: the shapes policy when --target)")
    ev_cmd.add_argument("--scheduler", default="ddim", choices=("ddim", "dpm++", "euler", "pndm"))
    ev_cmd.add_argument("--steps", type=int, default=None, help="sampler steps")
    ev_cmd.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    ev_cmd.add_argument("--report", default=None, help="report folder (default <home>/reports/evaluate-TIME)")
    ev_cmd.add_argument("--json", action="store_true", help="print JSON")
    ev_cmd.set_defaults(func=cmd_evaluate)

    un = commands.add_parser("unlearn", help="remove one concept from a model (one decremental step) and evaluate it")
    un.add_argument("--concept", required=True, help="the concept to remove")
    un.add_argument("--synonym", action="append", help="another name of the concept (repeatable)")
    un.add_argument("--anchor", default=None, help="what the concept should become (default: 'shape' for objects, nothing for styles)")
    un.add_argument("--preserve", action="append", help="a related concept to keep (repeatable)")
    un.add_argument("--erased", action="append", help="a concept erased earlier in the lineage (repeatable): replayed")
    un.add_argument("--method", default="duge", help="duge (default), esd-x, esd-u, ablation, rgd or uce")
    un.add_argument("--params", default=None, help="xattn-kv, xattn, non-xattn, full or lora (default: the method's own; esd-u: non-xattn, others: xattn-kv)")
    un.add_argument("--steps", type=int, default=None, help="training steps (default 150)")
    un.add_argument("--seed", type=int, default=0)
    un.add_argument("--gradient-surgery", action="store_true", help="project the forget gradient off the preserve gradient on conflict")
    un.add_argument("--domain-correction", action="store_true", help="duge only: a latent discriminator makes target outputs look like anchor outputs (DoCo)")
    un.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    un.add_argument("--model", default=None, help="the parent: 'shapes', a diffusers folder, an unlearn --out folder, or models:/...")
    un.add_argument("--eval-samples", type=int, default=6, help="images per concept in the evaluation")
    un.add_argument("--out", required=True, help="output folder (new or empty; a folder with a checkpoint resumes)")
    un.add_argument("--json", action="store_true", help="print JSON")
    un.set_defaults(func=cmd_unlearn)

    world = commands.add_parser("world", help="the embedded shapes world: train, eval, export")
    world_commands = world.add_subparsers(dest="world_command", required=True, parser_class=_Parser, metavar="ACTION")
    train = world_commands.add_parser("train", help="retrain detector, VAE and UNet (seeded, resumable)")
    train.add_argument("--stage", action="append", choices=("detector", "vae", "unet"), help="only these stages (repeatable)")
    train.add_argument("--force", action="store_true", help="retrain stages whose weights exist")
    train.add_argument("--seed", type=int, default=None, help="master seed (default 0)")
    train.add_argument("--unet-steps", type=int, default=None, help="UNet training steps (default 11000)")
    train.add_argument("--weights-dir", default=None, help="write weights here instead of the package")
    train.add_argument("--json", action="store_true", help="print JSON")
    train.set_defaults(func=cmd_world_train)
    ev = world_commands.add_parser("eval", help="measure the detector and the base model")
    ev.add_argument("--model", default=None, help="'shapes' (default), or a diffusers directory")
    ev.add_argument("--steps", type=int, default=None, help="sampler steps")
    ev.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    ev.add_argument("--colours", type=int, default=3, help="colours per object x style combination (1-6)")
    ev.add_argument("--report", default=None, help="folder for grids and JSON (default <home>/reports/world)")
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.set_defaults(func=cmd_world_eval)
    export = world_commands.add_parser("export", help="write the base model as a complete diffusers directory")
    export.add_argument("dir", help="an empty or new folder")
    export.add_argument("--json", action="store_true", help="print JSON")
    export.set_defaults(func=cmd_world_export)
    return parser


def _quiet_libraries() -> None:
    """Keep stderr for Lethe's own messages: libraries' load reports and bars are noise to a user."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a hub that is not there
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("generate", "world", "export", "evaluate", "unlearn", "run", "audit", "serve"):
            import diffusers
            import transformers

            diffusers.utils.logging.disable_progress_bar()
            transformers.utils.logging.disable_progress_bar()
        return args.func(args)
    except BadInput as error:
        message = str(error)
        print(message if message.startswith("lethe") else f"lethe: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lethe: interrupted (long runs resume from their last checkpoint)", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one line for people, the traceback on request
        if os.environ.get("LETHE_DEBUG"):
            raise
        print(f"lethe: failed: {type(error).__name__}: {error} (LETHE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
