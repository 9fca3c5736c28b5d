"""Shared fixtures. Nothing here reaches a model hub: HF_HUB_OFFLINE is set before any import."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shapes_pipe():
    """The committed shapes base model, loaded once through the one loading function."""
    from unlearning.shapes.model import load_shapes_pipeline

    return load_shapes_pipeline()


@pytest.fixture(scope="session")
def detector():
    from unlearning.shapes.train import load_detector

    return load_detector()


@pytest.fixture(scope="session")
def judges():
    """The shapes world's two judges, as every evaluation uses them."""
    from unlearning.shapes.judge import shapes_judges

    return shapes_judges()
