"""`lethe submit | status | history | approve | reject | rollback | revoke`: the queue and its governance.

None of these loads a model (`lethe submit --help` and `lethe status` import no torch: a test checks).
"""

from __future__ import annotations

import sys

from flows.cli.common import (
    EXIT_FAILED,
    BadInput,
    add_json,
    ledger,
    prefect_environment,
    print_json,
    refusals,
    registry,
    settings,
)


def submit_requests(config, specs: list) -> list:
    """Check requests against the lineage's world, then queue them (all or nothing); announce them."""
    from pipeline.intake import check_requests
    from pipeline.world import world_for

    try:
        check_requests(specs, world_for(config))
        submitted = ledger(config).submit_many(specs, lineage=config.model_name)
    except refusals() as error:
        raise BadInput(str(error)) from None
    return submitted


def announce(config, submitted) -> str:
    """`lethe.request.submitted` for each request, after the ledger write; a failed send is a warning."""
    from flows.events import REQUEST_SUBMITTED, announce_submitted

    event = announce_submitted(config.model_name, [r.as_dict() for r in submitted])
    if event.startswith("not sent"):
        print(
            f"lethe: warning: {REQUEST_SUBMITTED} {event}; the drainer's schedule will pick the request up",
            file=sys.stderr,
        )
    return event


def read_requests_file(path: str) -> list:
    from pipeline.intake import read_requests_file as read
    from registry.requests import InvalidRequest

    try:
        return read(path)
    except InvalidRequest as error:
        raise BadInput(str(error)) from None


# ---------------------------------------------------------------- submit
def cmd_submit(args) -> int:
    config = settings()
    from registry.requests import RequestSpec

    if args.file:
        if args.concept is not None:
            raise BadInput("give either -f FILE or --concept, not both")
        specs = read_requests_file(args.file)
    else:
        if args.concept is None or args.requester is None:
            raise BadInput("--concept and --requester are required (or -f FILE)")
        specs = [
            RequestSpec(
                concept=args.concept,
                requester=args.requester,
                synonyms=tuple(args.synonym or ()),
                anchor=args.anchor or "",
                preserve=tuple(args.preserve or ()),
                method=args.method,
                reason=args.reason or "",
                id=args.id,
            )
        ]
    submitted = submit_requests(config, specs)
    event = announce(config, submitted)
    if args.json:
        print_json({"submitted": [{"id": r.id, "seq": r.seq, "concept": r.concept} for r in submitted], "event": event})
    else:
        for request in submitted:
            print(request.id)
    return 0


def submit_parser(commands) -> None:
    from unlearning.methods import DEFAULT_METHOD, METHOD_NAMES

    p = commands.add_parser("submit", help="queue a removal request (or several with -f FILE)")
    p.add_argument("-f", "--file", default=None, help="a YAML list of requests (at most 1 MB)")
    p.add_argument("--concept", default=None, help="the concept to remove")
    p.add_argument("--requester", default=None, help="who asks")
    p.add_argument("--synonym", action="append", help="another name of the concept (repeatable)")
    p.add_argument("--anchor", default=None, help="what the concept should become (default: the world's)")
    p.add_argument("--preserve", action="append", help="a related concept to keep (repeatable)")
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        help=f"unlearning method: {', '.join(METHOD_NAMES)} (default {DEFAULT_METHOD})",
    )
    p.add_argument("--reason", default=None, help="why (takedown reference, ...)")
    p.add_argument("--id", default=None, help="request id (default: generated)")
    add_json(p)
    p.set_defaults(func=cmd_submit)


# ---------------------------------------------------------------- status
def cmd_status(args) -> int:
    config = settings()
    from registry.versions import PRODUCTION
    from unlearning.shapes.shipped import WEIGHTS_DIR, weights_available, weights_bytes, weights_sha256

    models = registry(config)
    production = models.alias_version(PRODUCTION)
    requests = ledger(config).requests(config.model_name)
    trained = weights_available()
    result = {
        "production": {"version": production, "erased": models.erased_in(production)},
        "requests": [
            {
                "id": r.id,
                "seq": r.seq,
                "concept": r.concept,
                "state": r.state,
                "requester": r.requester,
                "parent_version": r.parent_version,
                "candidate_version": r.candidate_version,
                "error": r.error,
            }
            for r in requests
        ],
        "settings": config.shown(),
        "shapes_world": {
            "weights_dir": str(WEIGHTS_DIR),
            "trained": trained,
            "bytes": weights_bytes(),
            "sha256": weights_sha256() if trained else None,
        },
    }
    if args.json:
        print_json(result)
        return 0
    prod = result["production"]
    print(
        f"production: {'none' if prod['version'] is None else 'version ' + str(prod['version'])}"
        f"  erased: {', '.join(prod['erased']) or '-'}"
    )
    print(f"requests ({len(requests)}):")
    for r in result["requests"]:
        print(
            f"  {r['seq']:4d}  {r['id']:28s} {r['state']:18s} {r['concept']}"
            + (f"  candidate v{r['candidate_version']}" if r["candidate_version"] else "")
        )
    print("settings:")
    for key, value in result["settings"].items():
        print(f"  {key:22s}{value}")
    world = result["shapes_world"]
    print(
        f"  {'shapes weights':22s}{world['weights_dir']} ({world['bytes'] / 1e6:.1f} MB, trained: {world['trained']})"
    )
    return 0


def status_parser(commands) -> None:
    p = commands.add_parser("status", help="the queue, the production version and the settings")
    add_json(p)
    p.set_defaults(func=cmd_status)


# ---------------------------------------------------------------- history
def cmd_history(args) -> int:
    config = settings()
    try:
        trail = ledger(config).history(args.id)
    except refusals() as error:
        raise BadInput(str(error)) from None
    lineage = lineage_rows(config)
    if args.json:
        print_json({"lineage": lineage, "history": trail})
        return 0
    if lineage and args.id is None:
        print(
            "lineage: "
            + " -> ".join(f"~~{row['concept']}~~" if row["state"] == "revoked" else row["concept"] for row in lineage)
            + "   (~~revoked~~)"
        )
    for event in trail:
        change = f"{event['from_state'] or '-'} -> {event['to_state']}" if event["event"] == "state" else event["event"]
        print(f"{event['at']}  {event['request_id'] or '':24s} {change:32s} by {event['actor']}  {event['detail']}")
    return 0


def lineage_rows(config) -> list[dict]:
    """The lineage's erasures in queue order: what production holds, the revoked ones marked."""
    from registry.ledger import ACCEPTED, PROMOTED, REVOKED

    shown = (PROMOTED, ACCEPTED, REVOKED)
    return [
        {"id": r.id, "concept": r.concept, "state": r.state, "version": r.candidate_version, "replays": r.replays}
        for r in ledger(config).requests(config.model_name)
        if r.state in shown
    ]


def history_parser(commands) -> None:
    p = commands.add_parser("history", help="the audit trail")
    p.add_argument("--id", default=None, help="only this request")
    add_json(p)
    p.set_defaults(func=cmd_history)


# ---------------------------------------------------------------- approve / reject
def _answer(config, request_id: str, answer) -> str | None:
    """Hand the answer to the run paused for it (flows/approval.py); the state it reached, or None
    when no live run waits (the caller decides directly)."""
    prefect_environment(config)
    from flows.approval import answer_paused_run

    if answer_paused_run(config, request_id, answer):
        return ledger(config).get(request_id).state
    return None


def _give_answer(config, request_id: str, answer, *, as_json: bool) -> int:
    """Answer a request's paused flow run through Prefect, or decide it directly when none is paused."""
    from pipeline.decide import apply_answer

    wanted = "promoted" if answer.approve else "rejected"
    try:
        if (state := _answer(config, request_id, answer)) is not None:
            result = {"id": request_id, "state": state, "via": "prefect"}
            if answer.approve:
                promoted = state == "promoted"
                result["production_version"] = ledger(config).get(request_id).candidate_version if promoted else None
            print_json(result) if as_json else print(f"{request_id}: {state} (answered the paused flow run)")
            return 0 if state == wanted else EXIT_FAILED
        result = {"id": request_id, **apply_answer(config, request_id, answer)}
    except refusals() as error:
        raise BadInput(str(error)) from None
    if as_json:
        print_json(result)
    elif answer.approve:
        print(f"{request_id}: promoted; production is now version {result['production_version']}")
        if back := result.get("revoked_concept"):
            print(
                f"revoked concept {back['concept']} drawn again: {back['detection']:.3f} "
                f"({back['relative']:.3f} x base {back['base_detection']:.3f})"
            )
        elif revocation := result.get("revocation_completed"):
            print(f"revocation {revocation} took effect; the next `lethe run` measures that its concept is back")
    else:
        print(f"{request_id}: rejected")
    return 0


def cmd_approve(args) -> int:
    from pipeline.values import Answer

    answer = Answer(approve=True, approver=args.approver, comment=args.comment or "")
    return _give_answer(settings(), args.id, answer, as_json=args.json)


def approve_parser(commands) -> None:
    p = commands.add_parser("approve", help="approve a candidate: it becomes production")
    p.add_argument("id", help="request id")
    p.add_argument("--approver", required=True, help="who approves (must be on settings.approvers)")
    p.add_argument("--comment", default=None)
    add_json(p)
    p.set_defaults(func=cmd_approve)


def cmd_reject(args) -> int:
    from pipeline.values import Answer

    if not args.reason.strip():
        raise BadInput("a rejection needs a reason")
    answer = Answer(approve=False, approver=args.approver, comment=args.reason)
    return _give_answer(settings(), args.id, answer, as_json=args.json)


def reject_parser(commands) -> None:
    p = commands.add_parser("reject", help="reject a candidate")
    p.add_argument("id", help="request id")
    p.add_argument("--approver", required=True, help="who rejects (must be on settings.approvers)")
    p.add_argument("--reason", required=True)
    add_json(p)
    p.set_defaults(func=cmd_reject)


# ---------------------------------------------------------------- rollback
def cmd_rollback(args) -> int:
    config = settings()
    from registry.governance import rollback

    if args.to < 1:
        raise BadInput("--to must be a version number >= 1")
    try:
        previous = rollback(
            ledger(config),
            registry(config),
            to_version=args.to,
            approver=args.approver,
            approvers=config.approvers,
            reason=args.reason or "",
        )
    except refusals() as error:
        raise BadInput(str(error)) from None
    result = {"production_version": args.to, "previous_production_version": previous}
    print_json(result) if args.json else print(f"production: version {previous} -> version {args.to}")
    return 0


def rollback_parser(commands) -> None:
    p = commands.add_parser("rollback", help="point production back at an earlier approved version")
    p.add_argument("--to", type=int, required=True, help="version number")
    p.add_argument("--approver", required=True)
    p.add_argument("--reason", default=None)
    add_json(p)
    p.set_defaults(func=cmd_rollback)


# ---------------------------------------------------------------- revoke
def cmd_revoke(args) -> int:
    config = settings()
    from pipeline.revoke import revoke

    try:
        result = revoke(config, args.id, approver=args.approver, reason=args.reason)
    except refusals() as error:
        raise BadInput(str(error)) from None
    if args.json:
        print_json(result)
    elif result["replays"]:
        print(
            f"{args.id}: revocation {result['revocation']} queued; {len(result['replays'])} request(s) to re-derive "
            f"from version {result['parent_version']}: {', '.join(result['replays'])}"
        )
        print("production moves when the re-derived head is approved (lethe run drains them)")
    else:
        print(
            f"{args.id}: revoked (nothing after it to replay); production is now "
            f"{'the base' if result['production_version'] is None else 'version ' + str(result['production_version'])}"
        )
    if result["replays"]:
        announce(config, [ledger(config).get(i) for i in result["replays"]])
    return 0


def revoke_parser(commands) -> None:
    p = commands.add_parser("revoke", help="remove one promoted request's effect: re-derive the lineage without it")
    p.add_argument("id", help="the promoted request to revoke")
    p.add_argument("--approver", required=True, help="who decides (on settings.approvers, not the request's requester)")
    p.add_argument("--reason", required=True, help="why (licence obtained, granted in error, ...)")
    add_json(p)
    p.set_defaults(func=cmd_revoke)


PARSERS = (status_parser, submit_parser, approve_parser, reject_parser, rollback_parser, revoke_parser, history_parser)
