"""An InferenceService manifest read into KServe's own API models (its Python SDK's V1beta1InferenceService and the
Kubernetes models it holds), strictly: a field those models do not know, a value of the wrong type, a missing
required field or a value outside an enum is an error; what the models give back must be the manifest itself.

Runs in the KServe venv (.venv-kserve, `make peers-setup`; tests/test_kserve.py runs it):

    .venv-kserve/bin/python scripts/kserve_check.py deploy/kserve/inferenceservice.yaml
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

import kserve.models
import kubernetes.client.models
import yaml
from kserve import ApiClient

PRIMITIVES = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object}
ROOT_MODEL = "V1beta1InferenceService"


def model_class(name: str) -> type:
    """A model named as the SDK's type strings name them: KServe's own first, then the Kubernetes ones it holds."""
    found = getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name, None)
    if found is None:
        raise TypeError(f"no API model named {name}")
    return found


def build(data: Any, kind: str, where: str) -> Any:
    """`data` (from YAML) as the API type `kind`; where: the field's path, for the error. The SDKs write their
    containers two ways: list[T] and dict(K, V) (Kubernetes'), List[T] and Dict[K, V] (KServe's)."""
    if kind.startswith(("List[", "Dict[")):
        kind = f"list[{kind[5:-1]}]" if kind.startswith("List[") else f"dict({kind[5:-1]})"
    if kind.startswith("list["):
        if not isinstance(data, list):
            raise TypeError(f"{where}: a list expected, got {data!r}")
        return [build(item, kind[5:-1], f"{where}[{i}]") for i, item in enumerate(data)]
    if kind.startswith("dict("):
        if not isinstance(data, dict):
            raise TypeError(f"{where}: a mapping expected, got {data!r}")
        value_kind = kind[5:-1].split(", ", 1)[1]
        return {key: build(value, value_kind, f"{where}.{key}") for key, value in data.items()}
    if kind in PRIMITIVES:
        if not isinstance(data, PRIMITIVES[kind]) or (kind == "int" and isinstance(data, bool)):
            raise TypeError(f"{where}: {kind} expected, got {data!r}")
        return data
    if kind in ("datetime", "date"):
        return data if isinstance(data, (datetime.date, str)) else build(data, "str", where)
    cls = model_class(kind)
    if not isinstance(data, dict):
        raise TypeError(f"{where}: {kind} (a mapping) expected, got {data!r}")
    by_json = {json_name: attribute for attribute, json_name in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    if unknown:
        raise TypeError(f"{where}: {kind} has no field {', '.join(unknown)}")
    fields = {by_json[key]: build(value, cls.openapi_types[by_json[key]], f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**fields)
    except ValueError as error:  # a required field missing, a value outside its enum (pydantic's errors are ValueErrors)
        raise ValueError(f"{where or '.'}: {kind}: {error}") from None


def check(path: Path) -> str:
    """The manifest's summary line, or a TypeError/ValueError saying what KServe's models refuse."""
    manifest = yaml.safe_load(path.read_text())
    if manifest.get("kind") != "InferenceService" or manifest.get("apiVersion") != "serving.kserve.io/v1beta1":
        raise ValueError(f"{path}: not a serving.kserve.io/v1beta1 InferenceService")
    service = build(manifest, ROOT_MODEL, "")
    again = ApiClient().sanitize_for_serialization(service)
    if again != manifest:
        raise ValueError(f"{path}: KServe's models give back something else:\n{yaml.safe_dump(again)}")
    predictor = service.spec.predictor
    ports = [f"{p.name} {p.container_port}" for c in predictor.containers for p in c.ports or []]
    return (f"{path}: a valid {ROOT_MODEL} (kserve SDK's models): {service.metadata.name},"
            f" {len(predictor.containers)} container(s), ports {', '.join(ports)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifests", nargs="+", type=Path, help="InferenceService YAML files")
    for path in p.parse_args(argv).manifests:
        try:
            print(check(path))
        except (TypeError, ValueError) as error:
            print(f"{path}: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
