"""The MLflow pyfunc face of a Lethe version: `mlflow.pyfunc.load_model(uri).predict(prompts)`.

The logged model carries the version's own artifacts; ancestors' deltas are fetched from the same
registry by `load_pipeline` (the tracking URI in force when the consumer loads the model). This file
is logged as code (MLflow's models-from-code, registry/versions.py), so it ends with `set_model`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow
import numpy as np

# predict takes a list of prompts or a DataFrame on purpose, so it has no type hints; MLflow's advice
# about them is raised when this class is defined, in whichever process loads this file (the CLI's own
# filters do not reach a model loaded from code).
warnings.filterwarnings("ignore", message=".*type hint", category=UserWarning)


class LethePyfunc(mlflow.pyfunc.PythonModel):
    """predict(list of prompts, or a DataFrame with a "prompt" column) -> (N, H, W, 3) uint8 images.

    Params (optional): seed (image k uses seed + k), steps, guidance_scale.
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

    def predict(self, context, model_input, params=None):
        from unlearning.sampling import generate

        if hasattr(model_input, "columns"):
            prompts = [str(p) for p in model_input["prompt"]]
        else:
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
