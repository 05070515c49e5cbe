"""The official GBFS 3.0 JSON Schemas and MDS 2.0 Provider API models (copied into tests/data with
their licences), as jsonschema validators: the oracle for the feeds' tests."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT202012

DATA = Path(__file__).resolve().parent / "data"
GBFS = DATA / "gbfs-3.0"
MDS = DATA / "mds-2.0"


@cache
def gbfs_validator(feed: str) -> Draft7Validator:
    schema = json.loads((GBFS / f"{feed}.json").read_text())
    return Draft7Validator(schema, format_checker=FormatChecker())


def gbfs_errors(feed: str, document: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in gbfs_validator(feed).iter_errors(document)]


@cache  # each file parsed once: resolving a reference must not read YAML again
def _retrieve(uri: str) -> Resource[Any]:
    path = Path(uri.removeprefix("file://"))
    if not path.is_file():
        # vehicle.yaml lists every mode's vehicle in a oneOf; only micromobility (ours) is shipped:
        # the others match nothing, so the oneOf holds exactly when the micromobility branch does.
        if "/modes/" in uri:
            return Resource.from_contents({"not": {}}, default_specification=DRAFT202012)
        raise NoSuchResource(ref=uri)
    return Resource.from_contents(yaml.safe_load(path.read_text()), default_specification=DRAFT202012)


@cache
def mds_validator(path: str) -> Draft202012Validator:
    """The 200 answer's schema of `path` in the Provider API (reference/provider.yaml)."""
    provider = MDS / "reference" / "provider.yaml"
    spec = yaml.safe_load(provider.read_text())
    schema = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    schema = {"$id": provider.as_uri(), **schema}
    registry: Registry[Any] = Registry(retrieve=_retrieve)  # type: ignore[call-arg]
    return Draft202012Validator(schema, registry=registry, format_checker=FormatChecker())


def mds_errors(path: str, document: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in mds_validator(path).iter_errors(document)]
