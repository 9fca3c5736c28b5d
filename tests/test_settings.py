import pytest
from pydantic import ValidationError

from pipeline.settings import load_settings


def test_defaults_are_the_embedded_setup_under_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("LETHE_HOME", "LETHE_CONFIG", "LETHE_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings()
    home = (tmp_path / ".lethe").resolve()
    assert settings.base_model == "shapes" and settings.model_name == "shapes-t2i"
    assert settings.ledger_url == f"sqlite:///{home / 'ledger.db'}"
    assert settings.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert settings.artifact_root == str(home / "artifacts")


def test_environment_beats_toml_beats_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lethe.toml").write_text('model_name = "from-toml"\ndevice = "cuda"\nsample_steps = 7\n')
    monkeypatch.setenv("LETHE_DEVICE", "cpu")
    monkeypatch.setenv("LETHE_HOME", str(tmp_path / "h"))
    settings = load_settings()
    assert settings.model_name == "from-toml" and settings.sample_steps == 7
    assert settings.device == "cpu"
    assert settings.ledger_url.endswith("/h/ledger.db")


def test_bad_values_name_each_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lethe.toml").write_text('sample_steps = 0\ncolour = "red"\n')
    monkeypatch.setenv("LETHE_DEVICE", "gpu")
    with pytest.raises(ValidationError) as raised:
        load_settings()
    fields = {error["loc"][0] for error in raised.value.errors()}
    assert {"sample_steps", "colour", "device"} <= fields
