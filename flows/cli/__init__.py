"""The `lethe` command line, in parts: requests.py (the queue and its governance), model.py (one model
outside the queue), world.py (the shapes world), jobs.py (the Prefect flows); common.py holds what they
share. Each command's handler sits beside its parser.

Errors are one line on stderr: exit 2 for input the user gave that was refused (nothing written), 1 for
a failure while working (its cause named). Every command that reports takes `--json`. Heavy libraries
are imported inside the commands, so `lethe --help`, `lethe submit` and `lethe status` never load torch.
"""

from __future__ import annotations

import os
import sys

from flows.cli import jobs, model, requests, world
from flows.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, BadInput, Parser

MODULES = (requests, jobs, model, world)
# command -> handler: what `lethe --help` lists (a test checks that the parsers say the same)
COMMANDS = {
    "status": requests.cmd_status,
    "submit": requests.cmd_submit,
    "approve": requests.cmd_approve,
    "reject": requests.cmd_reject,
    "rollback": requests.cmd_rollback,
    "revoke": requests.cmd_revoke,
    "history": requests.cmd_history,
    "run": jobs.cmd_run,
    "audit": jobs.cmd_audit,
    "serve": jobs.cmd_serve,
    "generate": model.cmd_generate,
    "evaluate": model.cmd_evaluate,
    "unlearn": model.cmd_unlearn,
    "export": model.cmd_export,
    "world": None,  # its actions: world.cmd_world_train, cmd_world_eval, cmd_world_export
}
MODEL_COMMANDS = ("generate", "world", "export", "evaluate", "unlearn", "run", "audit", "serve")


def build_parser() -> Parser:
    parser = Parser(prog="lethe", description="Continual concept unlearning for text-to-image models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for module in MODULES:
        for add in module.PARSERS:
            add(commands)
    return parser


def quiet_libraries() -> None:
    """Keep stderr for Lethe's own messages and progress bars: the libraries' load reports, download
    bars and warnings about choices Lethe makes on purpose are noise to a user."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on a hub that is not there
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts" bars
    # MLflow sets its loggers' level from this when it is imported (a setLevel before the import is undone):
    # its INFO lines ("Creating initial MLflow database tables") are noise here.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import logging
    import warnings

    for name in ("mlflow", "alembic"):  # INFO lines (DB migrations, "registered model") are noise here
        logging.getLogger(name).setLevel(logging.ERROR)
    # The model is logged as a python_model on purpose (registry/versions.py): MLflow's advice about
    # type hints, cloudpickle and pip requirements does not apply.
    for pattern in (
        ".*type hint.*",
        ".*[Cc]loud[Pp]ickle.*",
        ".*pip requirement.*",
        ".*input example.*",
        ".*signature.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    try:
        args = build_parser().parse_args(argv)
        if args.command in MODEL_COMMANDS:
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
        cause = f" (caused by {type(error.__cause__).__name__}: {error.__cause__})" if error.__cause__ else ""
        print(
            f"lethe: failed: {type(error).__name__}: {error}{cause} (LETHE_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
