"""The official Kubernetes OpenAPI schemas, as the offline API holds every object it stores to them.

The schemas are those the PyPI package ``kubernetes-validate`` ships (JSON Schema made from the
API server's own OpenAPI document, one set per Kubernetes minor version). Every object the
offline API stores (the result of a create, an update or a patch) is checked against the oldest
and the newest version the k8s backend supports (:data:`VERSIONS`), so the backend sends nothing
that either would refuse:

* a wrong type, a missing required field or a value outside an enum is a ``422 Invalid``, as the
  API server's own validation answers, with one ``details.causes`` entry per problem;
* a field the schema does not declare is what the server's *field validation* decides: with
  ``fieldValidation=Strict`` (which the backend sends) a ``400 BadRequest`` ``strict decoding
  error``; otherwise (``Warn``, the server's default, or ``Ignore``) the field is dropped (the
  warning the server would send in a ``Warning`` header is kept in ``ObjectStore.warnings``).

Loading a version's definitions takes a moment, so each version's validators are made once per
process.
"""

from __future__ import annotations

import functools
import json
import threading
from typing import Any

#: The Kubernetes versions the offline API checks every object against: 1.25, where Pod Security
#: admission (which the backend's pods are made for) became GA, and the newest ``kubernetes-validate``
#: ships. Both ends of what the README says the backend supports.
VERSIONS = ("1.25", "1.37")

_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _registry(directory: str) -> Any:
    from importlib.resources import files

    from referencing import Registry, Resource

    root = files("kubernetes_validate") / "kubernetes-json-schema" / directory
    definitions = json.loads((root / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry(), root


def _schema_directory(version: str, strict: bool) -> str:
    try:
        from kubernetes_validate.utils import all_versions  # the schemas are this package's data
    except ImportError:
        raise RuntimeError("the offline Kubernetes checks objects against the schemas of the package "
                           "kubernetes-validate: pip install 'coiled-k8s[test]'") from None

    shipped = [v for v in all_versions() if v.rsplit(".", 1)[0] == version]
    if not shipped:
        raise LookupError(f"kubernetes-validate ships no schemas for Kubernetes {version}")
    return f"v{shipped[-1]}-local" + ("-strict" if strict else "")


@functools.lru_cache(maxsize=None)
def validator(version: str, kind: str, api_version: str, strict: bool) -> Any:
    """The JSON Schema validator of ``kind`` in ``api_version`` for Kubernetes ``version``
    (``strict``: undeclared fields are errors too)."""
    import re

    from jsonschema.validators import Draft202012Validator

    with _lock:
        registry, root = _registry(_schema_directory(version, strict))
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = json.loads((root / f"{kind.lower()}-{group_version}.json").read_text())
    return Draft202012Validator(schema, registry=registry)


def _path(error: Any) -> str:
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "<root>"


def problems(obj: dict, version: str) -> tuple[list[dict], list[str]]:
    """What the schema of Kubernetes ``version`` refuses in ``obj`` (undeclared fields aside):
    field errors as the API server's validation reports them (``details.causes`` entries:
    ``reason``, ``message``, ``field``), and values of the wrong type, which the server already
    fails to decode (messages as its JSON decoder words them)."""
    causes, decoding = [], []
    for error in validator(version, obj["kind"], obj["apiVersion"], False).iter_errors(obj):
        path = _path(error)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else error.message
            field = missing if path == "<root>" else f"{path}.{missing}"
            causes.append({"reason": "FieldValueRequired", "message": "Required value", "field": field})
        elif error.validator == "enum":
            allowed = ", ".join(f'"{v}"' for v in error.validator_value if v is not None)
            causes.append({"reason": "FieldValueNotSupported", "field": path,
                           "message": f"Unsupported value: {json.dumps(error.instance)}: supported values: {allowed}"})
        elif error.validator in ("type", "oneOf", "anyOf"):
            wanted = error.validator_value if error.validator == "type" else "the declared type"
            decoding.append(f"json: cannot unmarshal {type(error.instance).__name__} into Go struct field "
                            f"{path} of type {wanted}")
        else:
            causes.append({"reason": "FieldValueInvalid", "field": path,
                           "message": f"Invalid value: {json.dumps(error.instance)[:80]}: {error.message[:160]}"})
    unique = {json.dumps(c, sort_keys=True): c for c in causes}
    return [unique[k] for k in sorted(unique)], sorted(set(decoding))


def unknown_fields(obj: dict, version: str) -> list[tuple[list[Any], str]]:
    """(path of the object, field name) of every field the schema of ``version`` does not declare."""
    found = []
    for error in validator(version, obj["kind"], obj["apiVersion"], True).iter_errors(obj):
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            declared = set(error.schema.get("properties") or {})
            found += [(list(error.absolute_path), key) for key in error.instance if key not in declared]
    return found


def field_name(path: list[Any], key: str) -> str:
    """A field's name as the server writes it in a strict decoding error (``spec.containers[0].x``)."""
    text = ""
    for part in [*path, key]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def drop(obj: dict, path: list[Any], key: str) -> None:
    """Remove one undeclared field, as the server prunes it."""
    node: Any = obj
    for part in path:
        node = node[part]
    node.pop(key, None)
