"""The structure issue's promises: light commands load no torch, the CLI's command map and its parsers
agree, every method has one record, and only Lethe's own refusals are exit 2."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers")


def _modules_after(code: str, tmp_path) -> list[str]:
    """Run `code` in a fresh interpreter (LETHE_HOME under tmp_path); the heavy modules it imported."""
    probe = (
        code + f"\nimport sys, json\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    env = {**os.environ, "LETHE_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("LETHE_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["submit", "--help"], ["status"], ["status", "--json"], ["history"]])
def test_light_commands_import_no_torch(tmp_path, argv):
    code = (
        "from flows.cli import main\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as stop:\n    code = stop.code\n"
        "assert code == 0, code"
    )
    assert _modules_after(code, tmp_path) == []


def test_submitting_a_request_imports_no_torch(tmp_path):
    code = "from flows.cli import main\nassert main(['submit', '--concept', 'circle', '--requester', 'alice']) == 0"
    assert _modules_after(code, tmp_path) == []


def test_method_names_are_known_without_torch(tmp_path):
    assert _modules_after("from unlearning.methods import METHOD_NAMES\nassert 'duge' in METHOD_NAMES", tmp_path) == []


def test_every_method_has_one_record():
    from unlearning.loop import UnlearnConfig
    from unlearning.methods import METHOD_NAMES, PARAMETER_SETS, REQUEST_OPTIONS, get_method

    for name in METHOD_NAMES:
        method = get_method(name)
        assert method.KIND in ("loss", "edit"), name
        assert callable(getattr(method, "loss" if method.KIND == "loss" else "edit")), name
        assert method.PARAMS in PARAMETER_SETS and isinstance(method.DEFAULTS, dict), name
        assert UnlearnConfig(concept="circle", method=name).params == method.PARAMS
    fields = {f.name for f in dataclasses.fields(UnlearnConfig)}
    assert set(REQUEST_OPTIONS) <= fields


def test_the_command_map_and_the_parsers_agree():
    from flows.cli import COMMANDS, build_parser

    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    assert set(commands.choices) == set(COMMANDS)
    for name, handler in COMMANDS.items():
        defaults = commands.choices[name]._defaults
        if handler is None:  # a command with actions (world): each action has its handler
            [actions] = [a for a in commands.choices[name]._actions if a.dest == f"{name}_command"]
            assert all(
                sub._defaults["func"].__name__ == f"cmd_{name}_{action}" for action, sub in actions.choices.items()
            )
        else:
            assert defaults["func"] is handler, name
            assert handler.__name__ == f"cmd_{name}"


def test_an_internal_error_is_exit_1_with_its_cause_not_bad_input(tmp_path, monkeypatch, capsys):
    """A ValueError from deep inside a library is a failure of Lethe (exit 1), not input the user gave."""
    from flows.cli import main
    from flows.cli import requests as requests_commands

    monkeypatch.setenv("LETHE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LETHE_CONFIG", raising=False)

    def broken(config, specs):
        raise ValueError("stack expects a non-empty TensorList")

    monkeypatch.setattr(requests_commands, "submit_requests", broken)
    assert main(["submit", "--concept", "circle", "--requester", "alice"]) == 1
    err = capsys.readouterr().err
    assert "failed: ValueError: stack expects a non-empty TensorList" in err and "error:" not in err
