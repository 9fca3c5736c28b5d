"""The MLflow pyfunc face of a Lethe version: `mlflow.pyfunc.load_model(uri).predict(prompts)`.

The logged model carries the version's own artifacts; ancestors' deltas are fetched from the same
registry by `load_pipeline` (the tracking URI in force when the consumer loads the model). This file
is logged as code (MLflow's models-from-code, registry/versions.py), so it ends with `set_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np


class LethePyfunc(mlflow.pyfunc.PythonModel):
    """predict(list of prompts, or a DataFrame with one "prompt" column) -> (N, H, W, 3) uint8 images.

    Params (optional): seed (image k uses seed + k), steps, guidance_scale. The type hints give MLflow the
    input schema (a DataFrame's one column becomes the list); MLflow infers no params from hints, so
    registry/versions.py writes the signature's params schema (`SIGNATURE`) after logging.
    """

    def load_context(self, context):
        from registry.loading import load_pipeline

        manifest = json.loads((Path(context.artifacts["lethe"]) / "manifest.json").read_text())
        version = self._own_version(manifest)
        uri = f"models:/{manifest['model_name']}/{version}"
        self.pipe = load_pipeline(uri, tracking_uri=mlflow.get_tracking_uri())

    @staticmethod
    def _own_version(manifest: dict) -> int:
        from registry.versions import ModelRegistry

        registry = ModelRegistry(mlflow.get_tracking_uri(), manifest["model_name"])
        version = registry.version_for_request(manifest["request_id"])
        if version is None:
            raise LookupError(f"no complete version for request {manifest['request_id']}")
        return version

    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> np.ndarray:
        from unlearning.sampling import generate

        prompts = [str(p) for p in model_input]
        params = params or {}
        seed = int(params.get("seed", 0))
        images = generate(
            self.pipe,
            prompts,
            [seed + k for k in range(len(prompts))],
            steps=int(params.get("steps", 25)),
            guidance_scale=float(params.get("guidance_scale", 5.0)),
        )
        return np.asarray(images)


mlflow.models.set_model(LethePyfunc())
