"""`registry.loading.load_parent`, the one way to load a parent (the flow, `lethe unlearn` and
`load_pipeline` call it): a base, an `lethe unlearn` folder and a registered version holding the same
delta give the same weights and the same identity (so they share the latent cache), and a version is
never applied to a base other than the one it was trained on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from registry.integrity import IntegrityError
from registry.loading import load_parent
from registry.versions import ModelRegistry
from tests.test_registry import _candidate
from tests.tiny_models import make_delta
from unlearning.sampling import load_model, model_identity


def test_a_base_an_unlearn_folder_and_a_version_load_alike(tiny_base, tmp_path):
    base_id, base_sha = model_identity(tiny_base)
    base = load_parent(str(tiny_base), tracking_uri=None, workdir=tmp_path / "w0")
    assert (base.ancestors, base.identity, base.version, base.base_sha256) == ([], base_sha, None, base_sha)

    pipe = load_model(tiny_base)
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    run = tmp_path / "unlearn-circle"
    run.mkdir()
    make_delta(pipe.unet, run / "delta.safetensors", seed=1, base_state=base_state)
    (run / "summary.json").write_text(
        json.dumps(
            {"base_model": str(tiny_base), "base_sha256": base_sha, "config": {"concept": "circle", "erased": []}}
        )
    )
    from_folder = load_parent(str(run), tracking_uri=None, workdir=tmp_path / "w1")

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = ModelRegistry(tracking_uri, "shapes-t2i", str(tmp_path / "artifacts"))
    version = registry.register_candidate(_candidate("r1", run / "delta.safetensors", None, ["circle"], tiny_base))
    from_registry = load_parent(f"models:/shapes-t2i/{version}", tracking_uri=tracking_uri, workdir=tmp_path / "w2")

    assert from_registry.version == version and from_registry.erased == from_folder.erased == ["circle"]
    assert from_registry.identity == from_folder.identity != base_sha
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(from_folder.pipe.unet.state_dict()[key], value), key
        assert torch.equal(from_registry.pipe.unet.state_dict()[key], value), key

    with pytest.raises(IntegrityError, match="differs"):  # the flow's configured base is another model
        load_parent(
            f"models:/shapes-t2i/{version}", tracking_uri=tracking_uri, workdir=tmp_path / "w3", base_model="shapes"
        )
    with pytest.raises(LookupError):
        load_parent("models:/shapes-t2i@production", tracking_uri=tracking_uri, workdir=tmp_path / "w4")
    with pytest.raises(FileNotFoundError):
        load_parent(str(tmp_path / "nothing-here"), tracking_uri=None, workdir=tmp_path / "w5")


def test_a_fresh_process_loads_a_version_from_the_registry_it_names(tiny_base, tmp_path):
    """Only the tracking URI passed in is used: MLflow resolves a version's `models:/m-…` source through
    its process-wide registry URI, which in a process that never registered anything is ./mlflow.db."""
    import subprocess
    import sys

    pipe = load_model(tiny_base)
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    make_delta(pipe.unet, tmp_path / "d1.safetensors", seed=1, base_state=base_state)
    tracking_uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    registry = ModelRegistry(tracking_uri, "shapes-t2i", str(tmp_path / "store" / "artifacts"))
    version = registry.register_candidate(_candidate("r1", tmp_path / "d1.safetensors", None, ["circle"], tiny_base))
    (tmp_path / "elsewhere").mkdir()
    code = (
        "from registry.loading import load_pipeline; "
        f"print(load_pipeline('models:/shapes-t2i/{version}', tracking_uri={tracking_uri!r}).lethe_version['erased'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path / "elsewhere",
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "['circle']"
    assert list((tmp_path / "elsewhere").iterdir()) == []  # no stray ./mlflow.db


def test_a_chained_unlearn_folder_has_one_loader_and_the_layout_of_unlearning_model_folder(tiny_base, tmp_path):
    """An `lethe unlearn --out` folder built on another keeps its ancestors' deltas and the parent's lineage
    terms under parents/ (pipeline/unlearn.py `keep_ancestors`). load_parent loads it (base sha256 checked);
    load_model, a loader of bases, refuses it by name instead of reading the lineage file as a delta."""
    from pipeline.unlearn import keep_ancestors
    from unlearning import model_folder

    base_id, base_sha = model_identity(tiny_base)
    pipe = load_model(tiny_base)
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}

    def step(folder: Path, concept: str, erased: list[str], seed: int) -> None:
        folder.mkdir(exist_ok=True)
        make_delta(pipe.unet, folder / model_folder.DELTA_FILE, seed=seed, base_state=base_state)
        summary = {
            "base_model": str(tiny_base),
            "base_sha256": base_sha,
            "config": {"concept": concept, "erased": erased},
        }
        (folder / model_folder.SUMMARY_FILE).write_text(json.dumps(summary))

    step(tmp_path / "circle", "circle", [], seed=1)
    terms = {"circle::cross": torch.ones(3, 3)}
    model_folder.save_lineage(tmp_path / "circle" / model_folder.LINEAGE_FILE, terms, ["circle"])
    first = load_parent(str(tmp_path / "circle"), tracking_uri=None, workdir=tmp_path / "w1")
    assert torch.equal(first.lineage["circle::cross"], terms["circle::cross"])

    keep_ancestors(first, tmp_path / "striped")
    step(tmp_path / "striped", "striped", ["circle"], seed=2)
    assert (tmp_path / "striped" / model_folder.PARENTS_DIR / model_folder.LINEAGE_FILE).is_file()
    second = load_parent(str(tmp_path / "striped"), tracking_uri=None, workdir=tmp_path / "w2")
    assert second.erased == ["circle", "striped"] and len(second.ancestors) == 2
    for key, value in pipe.unet.state_dict().items():  # both perturbations, in order, on the base
        torch.testing.assert_close(second.pipe.unet.state_dict()[key], value, rtol=0, atol=1e-6)

    with pytest.raises(FileNotFoundError, match="load_parent"):
        load_model(tmp_path / "striped")
