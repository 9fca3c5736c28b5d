"""The values that cross the steps of a request's life (the request itself: registry/requests.py).

Small and typed: Prefect passes them between tasks and records them, the CLI prints them. Tensors and
models never cross a step; each step reloads what it needs from the registry or the request's folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# One gate check as the gate wrote it (metric, value, bounds, verdict, reason, n, interval).
from unlearning.evaluation.gates import CheckOutcome as GateCheck


@dataclass(frozen=True)
class Parent:
    """The version a request starts from: what `production` pointed at when it was claimed."""

    version: int | None  # None: the lineage has no version yet (the base model)
    erased: tuple[str, ...] = ()  # the concepts that version erased, in order

    def source(self, model_name: str, base_model: str) -> str:
        """What registry.loading.load_parent loads for it."""
        return base_model if self.version is None else f"models:/{model_name}/{self.version}"


@dataclass(frozen=True)
class Outcome:
    """What unlearning and evaluating one request produced; its files lie in the request's folder."""

    request_id: str
    delta: str  # delta.safetensors (trained tensors minus base)
    report_dir: str
    report_html: str
    metrics: dict  # every number of the evaluation, flat ("forget.gate.ua": 0.97, ...)
    gate_passed: bool
    gate_reasons: tuple[str, ...]
    gate_checks: tuple[GateCheck, ...]
    erased: tuple[str, ...]  # cumulative, this request's concept last
    params: dict  # method, parameter set, steps, ... and the training time
    base_sha256: str
    resumed_from_step: int = 0  # > 0: training went on from a checkpoint
    reused_training: bool = False  # the step had finished before (a resumed request): not trained again
    extra_files: dict = field(default_factory=dict)  # name -> path of further artifacts of the version

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Outcome:
        data = dict(data)
        data["gate_checks"] = tuple(GateCheck(**c) for c in data["gate_checks"])
        for name in ("gate_reasons", "erased"):
            data[name] = tuple(data[name])
        return cls(**data)


@dataclass(frozen=True)
class Answer:
    """An answer to a candidate: approve (promote) or reject, by a person or by a named policy."""

    approve: bool
    approver: str  # a person on the approvers list, or the policy's name
    comment: str = ""
    policy: str | None = None  # set when no person decided (the auto-approval policy): audited as such
