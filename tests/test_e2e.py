"""End to end on real servers, loopback only (issue 6, "End-to-end test on real servers").

A Prefect server (`prefect server start`), an MLflow server whose artifacts go to S3 (moto's server),
and the ledger on SQLite — or on PostgreSQL when LETHE_TEST_POSTGRES_URL is set. Everything a person
types goes through the real `lethe` command in a subprocess: two requests are submitted; the drainer
(`lethe run`, no auto-approval) takes the first to awaiting approval and pauses on Prefect; a person
approves it with `lethe approve` (through the Prefect API) and it is promoted; the drainer takes the
second to awaiting approval and a person rejects it. Self-approval and an unlisted approver are refused
and change nothing. The tiny model built from config is the base, so the whole test takes minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import boto3
import pytest

from registry.ledger import AWAITING_APPROVAL, PROMOTED, PROMOTING, QUEUED, REJECTED, RUNNING, Ledger
from registry.loading import load_pipeline
from registry.versions import CANDIDATE, PREVIOUS_PRODUCTION, PRODUCTION, TAG_DELTA_SHA, TAG_REQUEST, ModelRegistry
from tests import servers
from tests.tiny_models import build_tiny_base

MODEL = "shapes-t2i"
APPROVERS = "alice,bob,carol"  # alice is on the list, but she submits the requests


@pytest.fixture
def ledger_url(request, tmp_path):
    if os.environ.get("LETHE_TEST_POSTGRES_URL"):
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.mark.slow
def test_two_requests_approved_and_rejected_on_real_servers(tmp_path, ledger_url):
    started = time.monotonic()
    base = build_tiny_base(tmp_path / "tiny-sd")
    (tmp_path / "pass.yaml").write_text("name: test\nthresholds:\n  - metric: forget.gate.ua\n    min: 0.0\n")
    moto, s3_endpoint = servers.start_moto(tmp_path)
    mlflow_server = drainer = None
    try:
        bucket = f"lethe-{uuid.uuid4().hex[:8]}"
        s3_client(s3_endpoint).create_bucket(Bucket=bucket)
        mlflow_server, tracking_uri = servers.start_mlflow(
            tmp_path, f"sqlite:///{tmp_path / 'mlflow-server.db'}", f"s3://{bucket}/mlflow", s3_endpoint
        )
        with servers.prefect_server(tmp_path) as prefect_api:
            env = {
                **os.environ,
                "HF_HUB_OFFLINE": "1",
                "LETHE_HOME": str(tmp_path / "home"),
                "LETHE_BASE_MODEL": str(base),
                "LETHE_WORLD": "shapes",
                "LETHE_MLFLOW_TRACKING_URI": tracking_uri,
                "LETHE_LEDGER_URL": ledger_url,
                "LETHE_APPROVERS": APPROVERS,
                "LETHE_POLICY": str(tmp_path / "pass.yaml"),
                "LETHE_SAMPLE_STEPS": "3",
                "LETHE_EVAL_FORGET_IMAGES": "2",
                "LETHE_EVAL_RETAIN_IMAGES": "2",
                "PREFECT_API_URL": prefect_api,
            }
            for name in ("LETHE_CONFIG", "LETHE_ARTIFACT_ROOT", "PREFECT_HOME", "MLFLOW_S3_ENDPOINT_URL"):
                env.pop(name, None)  # the client talks to MLflow only; MLflow's server talks to S3

            def lethe(*args: str) -> subprocess.CompletedProcess:
                return subprocess.run(
                    [sys.executable, "-m", "flows.cli", *args],
                    capture_output=True,
                    text=True,
                    cwd=tmp_path,
                    env=env,
                    timeout=900,
                )

            def refused(result: subprocess.CompletedProcess) -> str:
                lines = [line for line in result.stderr.splitlines() if line.strip()]
                assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("lethe"), result
                return lines[0]

            ledger = Ledger(ledger_url)
            registry = ModelRegistry(tracking_uri, MODEL)

            phases = {"setup (tiny base, three servers)": time.monotonic() - started}

            # -- two requests, announced to the Prefect server
            (tmp_path / "requests.yaml").write_text(
                "- {id: r1, concept: circle, requester: alice}\n- {id: r2, concept: star, requester: alice}\n"
            )
            submitted = lethe("submit", "-f", str(tmp_path / "requests.yaml"), "--json")
            assert submitted.returncode == 0, submitted.stderr
            assert [s["id"] for s in json.loads(submitted.stdout)["submitted"]] == ["r1", "r2"]
            assert json.loads(submitted.stdout)["event"] == "sent"
            assert [ledger.get(i).state for i in ("r1", "r2")] == [QUEUED, QUEUED]

            # -- the drainer takes the first to awaiting approval and waits there (paused on Prefect)
            log = tmp_path / "drainer.log"
            with open(log, "w") as out:
                drainer = subprocess.Popen(
                    [sys.executable, "-m", "flows.cli", "run", "--unlearn-steps", "2", "--json"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=tmp_path,
                    env=env,
                    start_new_session=True,
                )
            servers.wait_for(lambda: ledger.get("r1").state == AWAITING_APPROVAL, drainer, log, "r1 awaiting approval")
            phases["first request to awaiting approval"] = time.monotonic() - started - sum(phases.values())
            v1 = ledger.get("r1").candidate_version
            assert v1 is not None and ledger.get("r2").state == QUEUED  # strictly one at a time
            assert registry.alias_version(CANDIDATE) == v1 and registry.alias_version(PRODUCTION) is None
            status = json.loads(lethe("status", "--json").stdout)
            assert [(r["id"], r["state"]) for r in status["requests"]] == [("r1", AWAITING_APPROVAL), ("r2", QUEUED)]

            # -- refused: the requester herself, and someone not on the list; nothing changes
            trail_before = ledger.history()
            assert "cannot approve" in refused(lethe("approve", "r1", "--approver", "alice"))
            assert "not an approver" in refused(lethe("approve", "r1", "--approver", "mallory"))
            assert "not an approver" in refused(lethe("reject", "r1", "--approver", "mallory", "--reason", "no"))
            assert ledger.history() == trail_before and ledger.get("r1").state == AWAITING_APPROVAL
            assert registry.alias_version(CANDIDATE) == v1 and registry.alias_version(PRODUCTION) is None
            assert drainer.poll() is None  # still paused, waiting for a real answer

            # -- bob approves through the Prefect API: the paused run resumes and promotes
            approved = lethe("approve", "r1", "--approver", "bob", "--comment", "grids checked", "--json")
            assert approved.returncode == 0, approved.stderr
            assert json.loads(approved.stdout) == {
                "id": "r1",
                "state": PROMOTED,
                "production_version": v1,
                "via": "prefect",
            }
            assert registry.alias_version(PRODUCTION) == v1
            phases["refusals and approval"] = time.monotonic() - started - sum(phases.values())

            # -- the drainer goes on from the new production; carol rejects the second
            servers.wait_for(lambda: ledger.get("r2").state == AWAITING_APPROVAL, drainer, log, "r2 awaiting approval")
            v2 = ledger.get("r2").candidate_version
            assert v2 not in (None, v1) and ledger.get("r2").parent_version == v1
            assert registry.alias_version(CANDIDATE) == v2
            rejected = lethe(
                "reject", "r2", "--approver", "carol", "--reason", "star still visible in the grids", "--json"
            )
            assert rejected.returncode == 0, rejected.stderr
            assert json.loads(rejected.stdout) == {"id": "r2", "state": REJECTED, "via": "prefect"}

            # -- the queue is empty: the drainer ends and reports both
            assert drainer.wait(timeout=300) == 0, log.read_text()[-4000:]
            phases["second request to rejected"] = time.monotonic() - started - sum(phases.values())
            report = json.loads(log.read_text()[log.read_text().index("{\n") :])
            assert [(r["id"], r["state"], r["candidate_version"]) for r in report["requests"]] == [
                ("r1", PROMOTED, v1),
                ("r2", REJECTED, v2),
            ]
            assert report["production"] == {"version": v1, "erased": ["circle"]}

            # -- registry: aliases and tags
            assert (
                registry.alias_version(PRODUCTION),
                registry.alias_version(PREVIOUS_PRODUCTION),
                registry.alias_version(CANDIDATE),
            ) == (v1, None, None)
            tags1, tags2 = registry.version_tags(v1), registry.version_tags(v2)
            assert (
                tags1[TAG_REQUEST],
                tags1["lethe.parent_version"],
                json.loads(tags1["lethe.erased"]),
                tags1["lethe.gate"],
                tags1["lethe.complete"],
            ) == ("r1", "", ["circle"], "passed", "true")
            assert (
                json.loads(tags1["lethe.approval"])["decision"] == "approved"
                and json.loads(tags1["lethe.approval"])["by"] == "bob"
            )
            assert (tags2[TAG_REQUEST], tags2["lethe.parent_version"], json.loads(tags2["lethe.erased"])) == (
                "r2",
                str(v1),
                ["circle", "star"],
            )
            assert json.loads(tags2["lethe.approval"]) | {"at": None} == {
                "decision": "rejected",
                "by": "carol",
                "at": None,
                "comment": "star still visible in the grids",
            }

            # -- ledger states and the audit trail, in order, with who did what
            r1, r2 = ledger.get("r1"), ledger.get("r2")
            assert (r1.state, r1.parent_version, r1.candidate_version) == (PROMOTED, None, v1)
            assert (r2.state, r2.parent_version, r2.candidate_version, r2.error) == (
                REJECTED,
                v1,
                v2,
                "star still visible in the grids",
            )
            answers = {"r1": [(AWAITING_APPROVAL, PROMOTING, "bob"), (PROMOTING, PROMOTED, "bob")]}
            answers["r2"] = [(AWAITING_APPROVAL, REJECTED, "carol")]
            for request_id, answer in answers.items():
                trail = ledger.history(request_id)
                assert [(h["from_state"], h["to_state"], h["actor"]) for h in trail] == [
                    (None, QUEUED, "alice"),
                    (QUEUED, RUNNING, "continual-unlearning"),
                    (RUNNING, AWAITING_APPROVAL, "flow"),
                    *answer,
                ]
                assert trail[2]["detail"]["flow_run_id"]  # the paused run `lethe approve/reject` answered

            # -- S3 holds each version's delta, manifest and report; the registry's sha256 matches
            client = s3_client(s3_endpoint)
            keys = [
                o["Key"]
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])
            ]
            manifests = {}
            for key in (k for k in keys if k.endswith("lethe/manifest.json")):
                manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
                manifests[manifest["request_id"]] = (key.rsplit("/", 1)[0], manifest)
            assert sorted(manifests) == ["r1", "r2"]
            for request_id, tags in (("r1", tags1), ("r2", tags2)):
                folder, manifest = manifests[request_id]
                for name in ("delta.safetensors", "manifest.json", "report/report.html", "README.md"):
                    assert f"{folder}/{name}" in keys, f"{request_id}: {name} is not in S3"
                assert manifest["files"]["delta.safetensors"]["sha256"] == tags[TAG_DELTA_SHA]
            served = load_pipeline(f"models:/{MODEL}@production", tracking_uri=tracking_uri)  # verified from S3
            assert served.lethe_version["version"] == v1 and served.lethe_version["erased"] == ["circle"]

            # -- Prefect: the drainer and both request runs completed on the server
            from prefect import get_client
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as prefect:
                runs = {run.name: run.state.type.value for run in prefect.read_flow_runs()}
            assert runs.get("request-r1") == "COMPLETED" and runs.get("request-r2") == "COMPLETED", runs

            # -- revocation: erase star (continual UCE) on top of circle, then revoke circle; the lineage is
            #    re-derived without it through the same flow, and production moves with the head
            started_revocation = time.monotonic()
            ran = lethe("submit", "--concept", "star", "--requester", "dan", "--id", "r3", "--method", "continual-uce")
            assert ran.returncode == 0, ran.stderr
            ran = lethe("run", "--auto-approve", "--json")
            assert ran.returncode == 0, ran.stderr[-3000:]
            v3 = ledger.get("r3").candidate_version
            assert registry.alias_version(PRODUCTION) == v3 and registry.erased_in(v3) == ["circle", "star"]
            objects = s3_client(s3_endpoint).list_objects_v2(Bucket=bucket).get("Contents", [])
            assert any(o["Key"].endswith("lethe/lineage.safetensors") for o in objects)  # the closed form's terms
            trail_before = ledger.history()
            assert "cannot approve" in refused(lethe("revoke", "r1", "--approver", "alice", "--reason", "mine"))
            assert "no request with id" in refused(lethe("revoke", "r9", "--approver", "bob", "--reason", "x"))
            assert "only a promoted request" in refused(lethe("revoke", "r2", "--approver", "bob", "--reason", "x"))
            assert ledger.history() == trail_before
            revoked = lethe("revoke", "r1", "--approver", "bob", "--reason", "licence obtained", "--json")
            assert revoked.returncode == 0, revoked.stderr
            [replay] = json.loads(revoked.stdout)["replays"]
            assert "pending" in refused(lethe("revoke", "r3", "--approver", "bob", "--reason", "x"))
            assert registry.alias_version(PRODUCTION) == v3  # not before the head is approved
            ran = lethe("run", "--auto-approve", "--json")
            assert ran.returncode == 0, ran.stderr[-3000:]
            [re_derived] = json.loads(ran.stdout[ran.stdout.index("{") :])["requests"]
            assert (
                re_derived["id"] == replay and re_derived["state"] == PROMOTED and re_derived["parent_version"] is None
            )
            head = re_derived["candidate_version"]
            assert registry.alias_version(PRODUCTION) == head and registry.erased_in(head) == ["star"]
            assert ledger.get("r1").state == "revoked" and ledger.get("r3").state == "superseded"
            assert "lethe.revoked" in registry.version_tags(v1) and "lethe.superseded_by" in registry.version_tags(v3)
            history = lethe("history")
            assert history.stdout.startswith("lineage: ~~circle~~ -> star"), history.stdout[:300]
            card = (registry.download(head, tmp_path / "head") / "README.md").read_text()
            assert "~~circle~~ (r1, revoked: licence obtained)" in card  # the lineage, the revoked request struck
            served = load_pipeline(f"models:/{MODEL}@production", tracking_uri=tracking_uri)
            assert served.lethe_version["erased"] == ["star"]
            phases["revocation: erase, revoke, re-derive"] = time.monotonic() - started_revocation
    finally:
        if drainer is not None and drainer.poll() is None:
            servers.kill_group(drainer)
        if mlflow_server is not None:
            mlflow_server.stop()
        moto.stop()
    phases["checks and teardown"] = time.monotonic() - started - sum(phases.values())
    print(
        f"end-to-end on real servers: {time.monotonic() - started:.0f} s (ledger on {ledger_url.split(':')[0]}); "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.items())
    )
