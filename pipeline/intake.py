"""Intake: what a requester submits is read and checked here, before anything is written.

- Request files (`lethe submit -f`, `lethe run --requests`) are YAML lists of requests (or a mapping
  with a `requests:` list), at most `MAX_FILE_BYTES`, read without YAML aliases (an alias bomb of a
  few lines expands to gigabytes) and with no field but those of registry/requests.py.
- Text is normalised (registry/requests.py) before any rule sees it.
- A concept the lineage's world cannot judge is refused with the concepts it knows (the shapes world
  knows its vocabulary; a real model's open world takes any text); so are preserve concepts it does
  not know and method options the method does not have.

Every problem of every request is collected and named in one `InvalidRequest`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from registry.requests import FILE_FIELDS, InvalidRequest, RequestSpec
from unlearning.methods import DEFAULT_METHOD
from unlearning.world import World

MAX_FILE_BYTES = 1 << 20  # 1 MiB: thousands of requests; anything larger is not a requests file


class _NoAliases(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases: `*name` is where expansion bombs come from."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a requests file", mark)
        return super().compose_node(parent, index)


def read_requests_file(path_text: str) -> list[RequestSpec]:
    """The requests of a YAML file, each a RequestSpec (not yet checked against the ledger).

    Raises:
        InvalidRequest: no such file, too large, not text, malformed YAML, an alias, not a list of
            mappings, unknown fields (every problem named).
    """
    path = Path(path_text)
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such file")
    if (size := path.stat().st_size) > MAX_FILE_BYTES:
        raise InvalidRequest(f"{path}: {size} bytes; a requests file is at most {MAX_FILE_BYTES} bytes")
    try:
        document = yaml.load(path.read_bytes().decode("utf-8"), Loader=_NoAliases)  # noqa: S506 - a safe loader
    except UnicodeDecodeError:
        raise InvalidRequest(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as error:
        raise InvalidRequest(f"{path}: malformed YAML ({' '.join(str(error).split())})") from None
    entries = document.get("requests") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise InvalidRequest(f"{path}: expected a non-empty list of requests (or a 'requests:' list)")
    specs, problems = [], []
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            problems.append(f"request {i}: not a mapping")
            continue
        if unknown := sorted(set(map(str, entry)) - set(FILE_FIELDS)):
            problems.append(f"request {i}: unknown field(s) {', '.join(unknown)}; known: {', '.join(FILE_FIELDS)}")
            continue
        lists = {k: entry.get(k) or [] for k in ("synonyms", "preserve")}
        if any(not isinstance(v, list) for v in lists.values()):
            problems.append(f"request {i}: synonyms and preserve must be lists")
            continue
        specs.append(
            RequestSpec(
                concept=str(entry.get("concept", "")),
                requester=str(entry.get("requester", "")),
                synonyms=tuple(map(str, lists["synonyms"])),
                anchor=str(entry.get("anchor", "") or ""),
                preserve=tuple(map(str, lists["preserve"])),
                method=str(entry.get("method") or DEFAULT_METHOD),
                options=entry.get("options") or {},
                reason=str(entry.get("reason", "") or ""),
                id=None if entry.get("id") is None else str(entry["id"]),
            )
        )
    if problems:
        raise InvalidRequest(f"{path}: " + "; ".join(problems))
    return specs


def lineage_problems(spec: RequestSpec, world: World) -> list[str]:
    """What the lineage cannot take of this request: concepts its world cannot judge, options its
    method does not have (the method's own check, which loads it, runs only when options are given)."""
    problems = []
    for name, concepts in (("concept", [spec.concept]), ("preserve", list(spec.preserve))):
        unknown = [c for c in concepts if isinstance(c, str) and c and not world.known(c)]
        if unknown:
            problems.append(
                f"{name}: {', '.join(map(repr, unknown))} cannot be judged on this lineage's base "
                f"({world.name} world); known: {', '.join(world.vocabulary)}"
            )
    if spec.options and not spec.problems():
        from unlearning.loop import ConfigError, UnlearnConfig

        try:
            UnlearnConfig.from_request(spec).validate()
        except (ConfigError, TypeError) as error:
            problems.append(f"options: {error}")
    return problems


def check_requests(specs: list[RequestSpec], world: World) -> None:
    """Raises InvalidRequest naming every problem of every request (fields, limits, the lineage's world)."""
    problems = []
    for i, spec in enumerate(specs, start=1):
        found = spec.problems() + lineage_problems(spec, world)
        if found:
            problems.append(f"request {i}: " * (len(specs) > 1) + "; ".join(found))
    if problems:
        raise InvalidRequest("; ".join(problems))
