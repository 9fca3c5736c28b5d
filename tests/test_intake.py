"""Intake refuses at the door, with nothing written (pipeline/intake.py, registry/requests.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pipeline.intake import MAX_FILE_BYTES, check_requests, read_requests_file
from registry.ledger import ConflictingRequest, Ledger
from registry.requests import InvalidRequest, RequestSpec, normalise_concept
from unlearning.shapes.world import ShapesWorld
from unlearning.world import OpenWorld


def lethe(cwd, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LETHE_HOME": str(cwd / ".lethe")}
    env.pop("LETHE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_text_is_normalised_before_any_rule():
    assert normalise_concept("  Ｃｉｒｃｌｅ\u3000 ") == "circle"
    spec = RequestSpec("ｃｉｒｃｌｅ", "alice", synonyms=("DISC",), preserve=("Ring",))
    assert (spec.concept, spec.synonyms, spec.preserve) == ("circle", ("disc",), ("ring",))
    assert RequestSpec("circle\nstar", "alice").problems() == ["concept: contains control characters"]


def test_a_full_width_duplicate_is_refused_by_the_duplicate_rule(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.submit(RequestSpec("circle", "alice", id="r1"), lineage="shapes-t2i")
    with pytest.raises(ConflictingRequest, match="already requested"):
        ledger.submit(RequestSpec("ｃｉｒｃｌｅ", "bob", id="r2"), lineage="shapes-t2i")
    assert [r.id for r in ledger.requests()] == ["r1"]


def test_the_shapes_world_refuses_what_it_cannot_judge_and_an_open_world_takes_any_text():
    bad = RequestSpec("circle'; DROP TABLE requests;--", "alice", preserve=("teapot",))
    with pytest.raises(InvalidRequest) as refused:
        check_requests([bad], ShapesWorld())
    message = str(refused.value)
    assert "cannot be judged" in message and "known: circle, square" in message and "'teapot'" in message
    check_requests([bad], OpenWorld())  # a real model takes any text (stored safely as data)
    check_requests([RequestSpec("disc", "alice")], ShapesWorld())  # a synonym names a known concept


def test_a_request_of_a_file_without_a_method_gets_the_default_method(tmp_path):
    from unlearning.methods import DEFAULT_METHOD

    path = tmp_path / "requests.yaml"
    path.write_text(
        "requests:\n  - {concept: circle, requester: alice}\n  - {concept: star, requester: bob, method: uce}\n"
    )
    assert [spec.method for spec in read_requests_file(str(path))] == [DEFAULT_METHOD, "uce"]
    assert DEFAULT_METHOD == RequestSpec("circle", "alice").method  # the CLI's and the file's default are one


def test_unknown_method_options_are_refused():
    with pytest.raises(InvalidRequest, match="options: unknown warp"):
        check_requests([RequestSpec("circle", "alice", options={"warp": 9})], ShapesWorld())
    with pytest.raises(InvalidRequest, match="hyper: duge has no eta"):
        check_requests([RequestSpec("circle", "alice", method="duge", options={"hyper": {"eta": 1.0}})], ShapesWorld())


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):  # 9**9 strings if expanded
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\nrequests: [*i]\n")
    started = time.perf_counter()
    with pytest.raises(InvalidRequest, match="aliases"):
        read_requests_file(str(tmp_path / "bomb.yaml"))
    assert time.perf_counter() - started < 1.0


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("- {concept: circle, requester: alice}\n" * (MAX_FILE_BYTES // 30))
    with pytest.raises(InvalidRequest, match="at most"):
        read_requests_file(str(big))


@pytest.mark.parametrize(
    "argv",
    [
        ("--concept", "circle'; DROP TABLE requests;--", "--requester", "alice"),
        ("--concept", "teapot", "--requester", "alice"),
    ],
)
def test_the_cli_refuses_unknown_concepts_with_nothing_written(tmp_path, argv):
    result = lethe(tmp_path, "submit", *argv)
    assert result.returncode == 2 and "cannot be judged" in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    ledger = Ledger(f"sqlite:///{tmp_path / '.lethe' / 'ledger.db'}")
    assert ledger.requests() == [] and ledger.history() == []
