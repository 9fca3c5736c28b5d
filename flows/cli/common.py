"""What every `lethe` command shares: one-line errors, JSON output, the settings, safe writes.

Exit codes: 0 done; 1 a failure while working (an internal error, with its cause; a failed audit);
2 input the user gave was refused, and nothing was written. Only Lethe's own refusals are exit 2
(`refusals()`): an error from deep inside a library is a failure, never "bad input".
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class BadInput(Exception):
    """Input refused before anything is written (exit 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line on stderr (no usage dump) and exit 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse's signature
        raise BadInput(f"{self.prog}: {message}")


def refusals() -> tuple[type[Exception], ...]:
    """Lethe's own refusals of what the user asked: reported as one line with exit 2."""
    from pipeline.attacks import CorpusError
    from registry.integrity import IntegrityError
    from registry.ledger import LedgerError
    from registry.loading import ModelUriError, UnknownVersion
    from registry.requests import InvalidRequest
    from registry.versions import PromotionRefused
    from unlearning.evaluation.gates import PolicyError
    from unlearning.methods import UnknownMethod

    return (
        LedgerError,
        InvalidRequest,
        PromotionRefused,
        IntegrityError,
        ModelUriError,
        UnknownVersion,
        PolicyError,
        UnknownMethod,
        CorpusError,
    )


def model_refusals() -> tuple[type[Exception], ...]:
    """Refusals of commands that load or judge a model: the above, plus a bad model path, prompt, plan
    or config (these need torch, so only model commands import them)."""
    from unlearning.evaluation.backbones import MetricUnavailable
    from unlearning.evaluation.plan import PlanError
    from unlearning.loop import ConfigError
    from unlearning.sampling import PromptError
    from unlearning.world import NoJudge

    return (*refusals(), FileNotFoundError, PromptError, PlanError, ConfigError, NoJudge, MetricUnavailable)


def print_json(payload: dict) -> None:
    print(json.dumps(payload, indent=2, sort_keys=False, default=str))


def settings():
    from pydantic import ValidationError

    from pipeline.settings import load_settings

    try:
        return load_settings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors())
        raise BadInput(f"invalid settings ({problems})") from None
    except (OSError, ValueError) as error:  # e.g. malformed lethe.toml
        raise BadInput(f"invalid settings: {error}") from None


def writable_file(path_text: str, suffix: str) -> Path:
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


def empty_folder(path_text: str) -> Path:
    out = Path(path_text)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"{out}: exists and is not an empty folder")
    return out


def in_range(name: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise BadInput(f"--{name} must be between {low} and {high}")


def save_picture(picture, path: Path) -> None:
    """Write beside the target and rename: a crash never leaves a half-written picture."""
    from unlearning.files import replace_atomically

    replace_atomically(path, lambda tmp: picture.save(tmp, format="PNG"))


def prefect_environment(settings) -> None:
    """Prefect's state under LETHE_HOME (embedded: its ephemeral API), quiet unless asked."""
    if "PREFECT_HOME" not in os.environ:  # Prefect creates its home only when the parent exists
        (settings.home / "prefect").mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str((settings.home / "prefect").resolve())
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def ledger(settings):
    from registry.ledger import Ledger

    return Ledger(settings.ledger_url)


def registry(settings):
    from pipeline.claim import registry_for

    return registry_for(settings)


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
