"""What a request is: its fields, their limits and their normal form, defined once.

`RequestSpec` is what a requester asks for (erase `concept` from one lineage); `Request` is the
ledger's record of it (the spec plus id, order, state and versions). Every entry point — `lethe
submit`, `lethe run --requests`, `lethe unlearn`, the Prefect flows — goes through these two types;
nothing passes a request around as a dict.

Text is normalised before it is validated or compared: Unicode NFKC (so a full-width `ｃｉｒｃｌｅ`
is `circle`), spaces collapsed, concepts lower-cased (case-folded). Two requests for the same
concept therefore clash whatever their spelling.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, fields
from datetime import datetime

from unlearning.methods import DEFAULT_METHOD, METHOD_NAMES, REQUEST_OPTIONS

# The limits of every text field, in characters (after normalisation).
LIMITS = {
    "concept": 200,
    "synonyms": 200,
    "anchor": 200,
    "preserve": 200,
    "requester": 200,
    "method": 64,
    "reason": 2000,
}
MAX_LIST = 32  # synonyms or preserve concepts per request
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The fields a requests file (lethe submit -f, lethe run --requests) may give for each request.
FILE_FIELDS = ("id", "concept", "requester", "synonyms", "anchor", "preserve", "method", "options", "reason")


class InvalidRequest(ValueError):
    """The request is malformed; the message names every problem."""


def normalise_text(value: str) -> str:
    """NFKC (which also turns no-break and ideographic spaces into plain ones), runs of spaces collapsed,
    trimmed. Line breaks and tabs are control characters: they stay, and validation refuses them."""
    return re.sub(r" {2,}", " ", unicodedata.normalize("NFKC", value)).strip(" ")


def normalise_concept(value: str) -> str:
    """A concept's normal form: `normalise_text`, case-folded."""
    return normalise_text(value).casefold()


def _text_problems(name: str, value, *, required: bool) -> list[str]:
    if not isinstance(value, str):
        return [f"{name}: must be text"]
    if required and not value:
        return [f"{name}: is empty"]
    limit = LIMITS[name.split("[")[0]]
    problems = [f"{name}: has {len(value)} characters; at most {limit}"] if len(value) > limit else []
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        problems.append(f"{name}: contains control characters")
    return problems


@dataclass(frozen=True)
class RequestSpec:
    """What a requester asks for: erase `concept` (and its synonyms) from one model lineage.

    `options` are the method's settings a request may choose (unlearning.methods.REQUEST_OPTIONS:
    parameter set, steps, hyper-parameters, ...); the operator's settings decide the rest.
    """

    concept: str
    requester: str
    synonyms: tuple[str, ...] = ()
    anchor: str = ""
    preserve: tuple[str, ...] = ()
    method: str = DEFAULT_METHOD
    options: dict = field(default_factory=dict)
    reason: str = ""
    id: str | None = None
    # Set only on the requests a revocation queues (registry/ledger.py `Ledger.revoke`), never by a requester:
    replays: str | None = None  # the promoted request this one re-derives, with its very spec
    revocation: str | None = None  # the revocation it belongs to

    def __post_init__(self) -> None:
        def norm(value, concept: bool):
            if not isinstance(value, str):
                return value
            return normalise_concept(value) if concept else normalise_text(value)

        for name, concept in (
            ("concept", True),
            ("anchor", True),
            ("requester", False),
            ("method", False),
            ("reason", False),
        ):
            object.__setattr__(self, name, norm(getattr(self, name), concept))
        for name in ("synonyms", "preserve"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(norm(v, True) for v in value))

    def problems(self) -> list[str]:
        """Every problem of this request, each naming its field ([] when it is valid)."""
        problems = _text_problems("concept", self.concept, required=True)
        problems += _text_problems("requester", self.requester, required=True)
        problems += _text_problems("reason", self.reason, required=False)
        problems += _text_problems("anchor", self.anchor, required=False)
        problems += _text_problems("method", self.method, required=True)
        for name in ("synonyms", "preserve"):
            values = getattr(self, name)
            if not isinstance(values, tuple):
                problems.append(f"{name}: must be a list")
                continue
            if len(values) > MAX_LIST:
                problems.append(f"{name}: {len(values)} entries; at most {MAX_LIST}")
            for i, value in enumerate(values):
                problems += _text_problems(f"{name}[{i}]", value, required=True)
        if self.id is not None and not REQUEST_ID_PATTERN.fullmatch(str(self.id)):
            problems.append("id: must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if isinstance(self.method, str) and self.method and self.method not in METHOD_NAMES:
            problems.append(f"method: unknown {self.method!r}; known: {', '.join(METHOD_NAMES)}")
        if not isinstance(self.options, dict):
            problems.append("options: must be a mapping")
        elif unknown := sorted(set(self.options) - set(REQUEST_OPTIONS)):
            problems.append(f"options: unknown {', '.join(unknown)}; known: {', '.join(REQUEST_OPTIONS)}")
        if isinstance(self.concept, str) and self.concept:
            if self.anchor == self.concept:
                problems.append("anchor: equals the concept")
            if self.concept in (self.preserve if isinstance(self.preserve, tuple) else ()):
                problems.append("preserve: contains the concept itself")
        return problems

    def body(self) -> dict:
        """The JSON the ledger stores (everything but the id and the requester, which have columns)."""
        body = {
            "concept": self.concept,
            "synonyms": list(self.synonyms),
            "anchor": self.anchor,
            "preserve": list(self.preserve),
            "method": self.method,
            "options": dict(self.options),
            "reason": self.reason,
        }
        return {**body, **({"replays": self.replays, "revocation": self.revocation} if self.revocation else {})}


@dataclass(frozen=True)
class Request:
    """A request as the ledger records it: its spec, its place in the queue, its state and versions."""

    id: str
    seq: int
    lineage: str
    state: str
    requester: str
    concept: str
    synonyms: tuple[str, ...]
    anchor: str
    preserve: tuple[str, ...]
    method: str
    options: dict
    reason: str
    parent_version: int | None
    candidate_version: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    replays: str | None = None  # see RequestSpec
    revocation: str | None = None

    @classmethod
    def from_row(cls, row) -> Request:
        body = row["body"]
        return cls(
            id=row["id"],
            seq=row["seq"],
            lineage=row["lineage"],
            state=row["state"],
            requester=row["requester"],
            concept=row["concept"],
            synonyms=tuple(body.get("synonyms", ())),
            anchor=body.get("anchor", ""),
            preserve=tuple(body.get("preserve", ())),
            method=body.get("method", DEFAULT_METHOD),
            options=dict(body.get("options", {})),
            reason=body.get("reason", ""),
            parent_version=row["parent_version"],
            candidate_version=row["candidate_version"],
            error=row["error"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            replays=body.get("replays"),
            revocation=body.get("revocation"),
        )

    def spec(self) -> RequestSpec:
        return RequestSpec(
            concept=self.concept,
            requester=self.requester,
            synonyms=self.synonyms,
            anchor=self.anchor,
            preserve=self.preserve,
            method=self.method,
            options=dict(self.options),
            reason=self.reason,
            id=self.id,
            replays=self.replays,
            revocation=self.revocation,
        )

    def as_dict(self) -> dict:
        """Plain JSON values (`--json` output, Prefect parameters, events)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(
            synonyms=list(self.synonyms),
            preserve=list(self.preserve),
            created_at=self.created_at.isoformat(),
            updated_at=self.updated_at.isoformat(),
        )
        return out
