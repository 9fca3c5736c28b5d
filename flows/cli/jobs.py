"""`lethe run | audit | serve`: the Prefect flows — drain the queue, audit production, serve both."""

from __future__ import annotations

import sys
import time

from flows.cli.common import (
    EXIT_FAILED,
    BadInput,
    add_json,
    in_range,
    prefect_environment,
    print_json,
    refusals,
    registry,
    settings,
)
from flows.cli.requests import announce, read_requests_file, submit_requests
from pipeline.markdown import bound_text

# The metrics the run table shows for each request (all of them are in the report and in --json):
# UA where the base draws the target (erased/n), and retained accuracy relative to the base.
RUN_COLUMNS = (
    ("UA gate", "forget.gate.where_base_draws"),
    ("UA held-out", "forget.heldout.where_base_draws"),
    ("UA syn.", "forget.synonyms.where_base_draws"),
    ("IRA x", "retain.ira.relative"),
    ("CRA x", "retain.cra.relative"),
)
CELL = 13


def _cell(metrics: dict, key: str) -> str:
    if f"{key}.n" in metrics:  # a rate: its value and its counts
        return f"{metrics[f'{key}.ua']:.2f} {int(metrics[f'{key}.k'])}/{int(metrics[f'{key}.n'])}"
    return f"{metrics[key]:.3f}" if key in metrics else "-"


def _probe_line(metrics: dict) -> str:
    """The sweep and the attack of every concept the evaluation probed, on one line: relocations confirmed,
    the leak's UA where the base draws the concept (erased/n), the attack's ASR (drawn/tried), and broad
    retention (unlearning/evaluation/sweep.py, attack.py)."""
    probed = sorted(
        {key.split(".")[2] for key in metrics if key.startswith("sweep.concepts.")}
        | {key.split(".")[1] for key in metrics if key.startswith("attack.") and key.endswith(".asr")}
    )
    cells = []
    for concept in probed:
        parts = []
        if f"sweep.concepts.{concept}.relocations" in metrics:
            parts.append(f"relocated {int(metrics[f'sweep.concepts.{concept}.relocations'])}")
        if metrics.get(f"sweep.concepts.{concept}.leak.n"):
            leak = f"sweep.concepts.{concept}.leak"
            parts.append(f"leak UA {int(metrics[f'{leak}.k'])}/{int(metrics[f'{leak}.n'])}")
        if metrics.get(f"attack.{concept}.n"):
            parts.append(f"ASR {int(metrics[f'attack.{concept}.k'])}/{int(metrics[f'attack.{concept}.n'])}")
        cells.append(f"{concept}: {', '.join(parts) or '-'}")
    if "sweep.retention.distance" in metrics:
        cells.append(
            f"broad retention {metrics['sweep.retention.distance']:.3f}, FID {metrics['sweep.retention.fid']:.2f}, "
            f"shift {metrics['sweep.retention.max_shift']:.3f}"
        )
    return "; ".join(cells)


def _print_run(payload: dict) -> None:
    print(
        f"{'request':22s} {'concept':9s} {'parent':>6s} {'cand.':>5s} "
        + " ".join(f"{name:>{CELL}s}" for name, _ in RUN_COLUMNS)
        + "  state"
    )
    for r in payload["requests"]:
        metrics = r.get("metrics", {})
        shown = " ".join(f"{_cell(metrics, key):>{CELL}s}" for _, key in RUN_COLUMNS)
        reasons = f" ({'; '.join(r['gate_reasons'])})" if r.get("gate_reasons") and r["state"] == "rejected" else ""
        print(
            f"{r['id']:22s} {r['concept']:9s} {str(r.get('parent_version')):>6s} "
            f"{str(r.get('candidate_version')):>5s} "
            f"{shown}  {r['state']}{reasons}" + (f" ({r['error']})" if r.get("error") else "")
        )
        if _probe_line(metrics):
            print(f"{'':22s} sweep/attack: {_probe_line(metrics)}")
        if r.get("report"):
            print(f"{'':22s} report: {r['report']}")
    prod = payload["production"]
    print(
        f"production: {'none' if prod['version'] is None else 'version ' + str(prod['version'])}; erased: "
        f"{', '.join(prod['erased']) or '-'} ({payload['seconds']} s)"
    )


def _check_gate_files(config) -> None:
    """The files every evaluation of a run or an audit reads (the gate policy, the known-attack corpus), checked
    before anything is submitted or sampled: a malformed one is one line, not a request failed mid-flow."""
    from pipeline.attacks import check_corpus
    from pipeline.world import world_for
    from unlearning.evaluation.gates import default_policy, load_policy

    try:
        load_policy(config.policy or default_policy(world_for(config).name))
        check_corpus(config)
    except refusals() as error:
        raise BadInput(str(error)) from None


def cmd_run(args) -> int:
    config = settings()
    in_range("max", args.max, 1, 1_000_000)
    in_range("unlearn-steps", args.unlearn_steps, 0, 100_000)
    _check_gate_files(config)
    submitted = submit_requests(config, read_requests_file(args.requests)) if args.requests else []
    prefect_environment(config)
    if submitted:
        announce(config, submitted)  # a served drainer (lethe serve) may take them; this run waits for its lineage
    started = time.perf_counter()
    from flows.continual import continual_unlearning
    from registry.versions import PRODUCTION

    results = continual_unlearning(
        max_requests=args.max, auto_approve=args.auto_approve, unlearn_steps=args.unlearn_steps
    )
    models = registry(config)
    production = models.alias_version(PRODUCTION)
    payload = {
        "submitted": [r.id for r in submitted],
        "requests": results,
        "seconds": round(time.perf_counter() - started, 1),
        "production": {"version": production, "erased": models.erased_in(production)},
    }
    print_json(payload) if args.json else _print_run(payload)
    return 0


def run_parser(commands) -> None:
    p = commands.add_parser("run", help="the main job: submit requests (optional) and drain the queue")
    p.add_argument("--requests", default=None, help="a YAML list of requests to submit first")
    p.add_argument(
        "--auto-approve", action="store_true", help="approve passing candidates by the auto-approval policy (demo)"
    )
    p.add_argument("--max", type=int, default=None, help="process at most N requests")
    p.add_argument("--unlearn-steps", type=int, default=None, help="training steps per request (default: the method's)")
    add_json(p)
    p.set_defaults(func=cmd_run)


def cmd_audit(args) -> int:
    config = settings()
    _check_gate_files(config)
    prefect_environment(config)
    from flows.audit import erosion_audit

    result = erosion_audit()
    if args.json:
        print_json(result)
    elif result["version"] is None:
        print(f"{config.model_name} has no production version: nothing to audit")
    else:
        print(
            f"erosion audit of {config.model_name} version {result['version']} "
            f"(erased: {', '.join(result['erased']) or '-'}): " + ("PASSED" if result["passed"] else "FAILED")
        )
        for check in result["checks"]:
            value = "-" if check["value"] is None else f"{check['value']:.4f}"
            bound = bound_text(check["min"], check["max"], ascii_only=True)
            print(f"  {check['metric']:36s} {value:>8s}  {bound:12s} {'pass' if check['passed'] else 'FAIL'}")
        print(f"report: {result['report_html']}")
    return 0 if result["passed"] else EXIT_FAILED


def audit_parser(commands) -> None:
    p = commands.add_parser(
        "audit", help="erosion audit of production: every erased concept and the retain set, against the gate policy"
    )
    add_json(p)
    p.set_defaults(func=cmd_audit)


def cmd_serve(args) -> int:
    config = settings()
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise BadInput(
            "`lethe serve` needs a Prefect server for its schedules and events: set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api after `prefect server start`)"
        )
    from flows.serve import deployments, describe, serve_deployments

    served = deployments(config)
    if args.json:
        print_json({"api_url": api_url, "deployments": describe(served)})
    else:
        for row in describe(served):
            print(
                f"serving {row['deployment']}: cron {', '.join(row['schedules'])}"
                + (f"; on {', '.join(e for t in row['triggers'] for e in t)}" if row["triggers"] else "")
            )
        print(f"Prefect API {api_url}; Ctrl-C stops (and pauses the schedules)")
    sys.stdout.flush()
    serve_deployments(served)
    return 0


def serve_parser(commands) -> None:
    p = commands.add_parser(
        "serve", help="serve the drainer (cron + submit events) and the audit (cron) on a Prefect server"
    )
    p.add_argument("--json", action="store_true", help="print what is served as JSON, then serve")
    p.set_defaults(func=cmd_serve)


PARSERS = (run_parser, audit_parser, serve_parser)
