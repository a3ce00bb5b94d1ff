"""Requests held to botocore's service model, constraints included, as AWS holds them.

botocore's own ``ParamValidator`` checks only types and required members: a role name of 65
characters, an SSM parameter name with a space or an EC2 enum value that does not exist pass it,
and moto takes most of them. AWS refuses them. :func:`violations` checks a request's parameters
against the operation's input shape with every constraint the model states: string and list
lengths (``min``/``max``), patterns, enums, and numeric ranges.

It runs twice. In front of moto (:func:`request_violations`, called by the offline EC2's gate)
for every request of the JSON and query protocols (SSM, EC2, IAM, STS), whoever sends it: the
nodes' processes too, which cannot import this module. The request is read back into parameters
and checked only if botocore's own serializer, given them, writes the same request. And as a
botocore client plugin, which covers S3 (REST) too: with ``BOTOCORE_EXPERIMENTAL__PLUGINS`` naming this module
(:data:`PLUGIN`; :meth:`coiled_aws.offline.OfflineEC2.environ` sets it), every client made in a
process that can import it registers :func:`check` on ``before-parameter-build``, and a request
that breaks a constraint is refused before it is sent, with the error AWS answers:
``InvalidParameterValue`` (EC2), ``ValidationError`` (IAM, STS), ``ValidationException`` (SSM and
the other JSON services), ``InvalidArgument`` (S3), and AWS's message ("1 validation error
detected: Value '...' at 'roleName' failed to satisfy constraint: ...").
"""

from __future__ import annotations

import re
from typing import Any

#: The value of ``BOTOCORE_EXPERIMENTAL__PLUGINS`` that loads this module into every client.
PLUGIN = "coiled_model_validation=coiled_aws.testing.validation"

#: The error code each service answers a request that breaks its model's constraints with.
ERROR_CODES = {"ec2": "InvalidParameterValue", "iam": "ValidationError", "sts": "ValidationError", "s3": "InvalidArgument"}
#: JSON services (SSM and the like) answer this.
DEFAULT_ERROR_CODE = "ValidationException"

_PATTERNS: dict[str, re.Pattern | None] = {}


def _pattern(text: str) -> re.Pattern | None:
    """The model's pattern as a Python regular expression (None if Python cannot read it)."""
    if text not in _PATTERNS:
        try:
            _PATTERNS[text] = re.compile(text, re.DOTALL)
        except re.error:
            _PATTERNS[text] = None
    return _PATTERNS[text]


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


def violations(value: Any, shape: Any, where: str = "") -> list[str]:
    """Every constraint of ``shape`` (a botocore shape) that ``value`` breaks, in AWS's words."""
    found: list[str] = []
    if value is None or shape is None:
        return found
    meta = shape.metadata
    kind = shape.type_name

    def broke(constraint: str) -> None:
        found.append(f"Value '{_shown(value)}' at '{where}' failed to satisfy constraint: {constraint}")

    if kind == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                found += violations(value[name], member, f"{where}.{_lower_first(name)}" if where else _lower_first(name))
    elif kind == "list" and isinstance(value, (list, tuple)):
        if "min" in meta and len(value) < meta["min"]:
            broke(f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            broke(f"Member must have length less than or equal to {meta['max']}")
        for index, item in enumerate(value, 1):
            found += violations(item, shape.member, f"{where}.{index}.member")
    elif kind == "map" and isinstance(value, dict):
        for key, item in value.items():
            found += violations(key, shape.key, f"{where}.{key}.key")
            found += violations(item, shape.value, f"{where}.{key}.value")
    elif kind == "string" and isinstance(value, str):
        if "min" in meta and len(value) < meta["min"]:
            broke(f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            broke(f"Member must have length less than or equal to {meta['max']}")
        pattern = _pattern(meta["pattern"]) if "pattern" in meta else None
        if pattern is not None and not pattern.fullmatch(value):
            broke(f"Member must satisfy regular expression pattern: {meta['pattern']}")
        enum = getattr(shape, "enum", None)
        if enum and value not in enum:
            shown = ", ".join(enum[:20]) + (f", ... ({len(enum)} values)" if len(enum) > 20 else "")
            broke(f"Member must satisfy enum value set: [{shown}]")
    elif kind in ("integer", "long", "float", "double") and isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in meta and value < meta["min"]:
            broke(f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            broke(f"Member must have value less than or equal to {meta['max']}")
    elif kind == "blob" and isinstance(value, (bytes, bytearray, str)):
        if "min" in meta and len(value) < meta["min"]:
            broke(f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            broke(f"Member must have length less than or equal to {meta['max']}")
    return found


def error_code(service: str) -> str:
    return ERROR_CODES.get(service, DEFAULT_ERROR_CODE)


def refusal(service: str, operation: str, problems: list[str]) -> dict[str, Any]:
    """The error response AWS sends for ``problems``."""
    count = len(problems)
    message = f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(problems)
    return {
        "Error": {"Code": error_code(service), "Message": message, "Type": "Sender"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }


def check(params: dict[str, Any], model: Any, **_: Any) -> None:
    """``before-parameter-build`` handler: refuse ``params`` if they break ``model``'s input shape."""
    problems = violations(params, model.input_shape)
    if problems:
        service = model.service_model.endpoint_prefix
        response = refusal(service, model.name, problems)
        raise _error_class(service, response["Error"]["Code"])(response, model.name)


_CLIENT_ERRORS: dict[tuple[str, str], Any] = {}


def _error_class(service: str, code: str) -> Any:
    from botocore.exceptions import ClientError

    return _CLIENT_ERRORS.get((service, code), ClientError)


def initialize_client_plugin(client: Any) -> None:
    """botocore's plugin entry point: check every request of ``client``."""
    service = client.meta.service_model.endpoint_prefix
    code = error_code(service)
    # The client's own exception class for the code, when the service models it.
    _CLIENT_ERRORS.setdefault((service, code), client.exceptions.from_code(code))
    client.meta.events.register("before-parameter-build", check, unique_id="coiled-model-validation")


def register(session: Any) -> None:
    """Check every request of the clients ``session`` (a boto3 or botocore session) makes."""
    events = session.events if hasattr(session, "events") else session.get_component("event_emitter")
    events.register("before-parameter-build", check, unique_id="coiled-model-validation")


# -- the same check in front of moto, for processes that cannot load the plugin (the nodes) ---
_MODELS: dict[str, Any] = {}


def _service_model(service: str) -> Any:
    if service not in _MODELS:
        import botocore.session

        _MODELS[service] = botocore.session.get_session().get_service_model(service)
    return _MODELS[service]


def _serialized_name(member: Any, default: str, protocol: str) -> str:
    """The name a query or ec2 serializer gives a member (botocore's ``serialize``)."""
    if protocol == "ec2":
        if "queryName" in member.serialization:
            return member.serialization["queryName"]
        if "name" in member.serialization:
            name = member.serialization["name"]
            return name[0].upper() + name[1:]
        return default
    return member.serialization.get("name", default)


def _unflatten(shape: Any, flat: dict[str, str], prefix: str, protocol: str) -> Any:
    """The value at ``prefix`` of a query-serialized request, read back by ``shape``."""
    kind = shape.type_name
    if kind == "structure":
        value = {}
        for name, member in shape.members.items():
            key = f"{prefix}.{_serialized_name(member, name, protocol)}" if prefix else _serialized_name(member, name, protocol)
            if key in flat or any(k.startswith(key + ".") for k in flat):
                value[name] = _unflatten(member, flat, key, protocol)
        return value
    if kind == "list":
        if flat.get(prefix) == "":
            return []
        if protocol == "ec2" or shape.serialization.get("flattened"):
            base = prefix
        else:
            base = f"{prefix}.{shape.member.serialization.get('name', 'member')}"
        items, index = [], 1
        while f"{base}.{index}" in flat or any(k.startswith(f"{base}.{index}.") for k in flat):
            items.append(_unflatten(shape.member, flat, f"{base}.{index}", protocol))
            index += 1
        return items
    if kind == "map":
        base = prefix if shape.serialization.get("flattened") else f"{prefix}.entry"
        key_name, value_name = shape.key.serialization.get("name", "key"), shape.value.serialization.get("name", "value")
        found, index = {}, 1
        while f"{base}.{index}.{key_name}" in flat:
            found[flat[f"{base}.{index}.{key_name}"]] = _unflatten(shape.value, flat, f"{base}.{index}.{value_name}", protocol)
            index += 1
        return found
    text = flat.get(prefix, "")
    if kind in ("integer", "long"):
        return int(text)
    if kind in ("float", "double"):
        return float(text)
    if kind == "boolean":
        return text == "true"
    return text


def _query_params(operation: Any, form: dict[str, str], protocol: str) -> dict[str, Any] | None:
    """The parameters of a query or ec2 request, or None when they cannot be read back exactly
    (botocore's serializer, given them, must write the same form)."""
    from botocore.serialize import create_serializer
    from urllib.parse import parse_qsl

    try:
        params = _unflatten(operation.input_shape, form, "", protocol) if operation.input_shape else {}
        again = create_serializer(protocol, include_validation=False).serialize_to_request(params, operation)["body"]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    again = dict(parse_qsl(again, keep_blank_values=True)) if isinstance(again, str) else {k: str(v) for k, v in again.items()}
    again.pop("Action", None), again.pop("Version", None)
    return params if again == form else None


def _rest_operation(model: Any, method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> tuple[Any, dict[str, str]] | None:
    """The operation of a REST request (path-style addressing, as against the stand-in) and the
    values of its URI labels, or None when no operation, or more than one, fits it. Several
    operations share a method and path (PutObject, CopyObject, UploadPart): the query literals of
    the path and the members each requires in the query string and headers tell them apart."""
    import re
    from urllib.parse import parse_qsl, unquote

    fits: list[tuple[int, Any, dict[str, str]]] = []
    for name in model.operation_names:
        operation = model.operation_model(name)
        if operation.http.get("method") != method:
            continue
        template, _, literal = operation.http.get("requestUri", "").partition("?")
        pattern = re.sub(r"\\\{(\w+)\\\+\\\}", r"(?P<\1>.*)", re.escape(template))
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]*)", pattern)
        match = re.fullmatch(pattern + ("/?" if "+" not in template else ""), path)
        wanted = dict(parse_qsl(literal, keep_blank_values=True))
        if match is None or any(k not in query or (v and query[k] != v) for k, v in wanted.items()):
            continue
        required = [operation.input_shape.members[r].serialization for r in operation.input_shape.required_members] if operation.input_shape else []
        placed = [(r.get("location"), r.get("name", "")) for r in required if r.get("location") in ("querystring", "header")]
        if any(name not in query if where == "querystring" else name.lower() not in headers for where, name in placed):
            continue
        fits.append((len(wanted) + len(placed), operation, {k: unquote(v) for k, v in match.groupdict().items()}))
    if not fits:
        return None
    best = max(f[0] for f in fits)
    chosen = [f for f in fits if f[0] == best]
    return (chosen[0][1], chosen[0][2]) if len(chosen) == 1 else None


def _rest_params(operation: Any, labels: dict[str, str], query: dict[str, str], headers: dict[str, str]) -> dict[str, Any]:
    """The parameters a REST request carries in its URI, query string and headers (its payload,
    the object's bytes, has no constraints to check)."""
    params: dict[str, Any] = {}
    for name, member in (operation.input_shape.members.items() if operation.input_shape else ()):
        where, wire = member.serialization.get("location"), member.serialization.get("name", name)
        text = labels.get(wire) if where == "uri" else query.get(wire) if where == "querystring" else headers.get(wire.lower()) if where == "header" else None
        if text is None or member.type_name not in ("string", "integer", "long", "boolean"):
            continue
        try:
            params[name] = int(text) if member.type_name in ("integer", "long") else text == "true" if member.type_name == "boolean" else text
        except ValueError:
            continue
    return params


def rest_request_violations(service: str, method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> tuple[str, str] | None:
    """:func:`request_violations` for a REST service (S3): the request's method, path, query
    (decoded) and headers (lower-case names)."""
    try:
        model = _service_model(service)
    except Exception:
        return None
    found = _rest_operation(model, method, path, query, headers)
    if found is None:
        return None
    operation, labels = found
    problems = violations(_rest_params(operation, labels, query, headers), operation.input_shape)
    if not problems:
        return None
    error = refusal(service, operation.name, problems)["Error"]
    return error["Code"], error["Message"]


def request_violations(service: str, target: str | None, body: bytes) -> tuple[str, str] | None:
    """For a request to ``service`` as it reaches the server (its ``X-Amz-Target`` and body):
    the error code and message AWS answers if it breaks its operation's constraints, else None.
    JSON and query protocols (SSM, EC2, IAM, STS); None for a request that cannot be read back."""
    import json
    from urllib.parse import parse_qsl

    try:
        model = _service_model(service)
    except Exception:
        return None
    protocol = model.protocol
    if protocol == "json" and target:
        try:
            operation = model.operation_model(target.rsplit(".", 1)[-1])
            params = json.loads(body or b"{}")
        except Exception:
            return None
    elif protocol in ("query", "ec2"):
        form = dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
        action = form.pop("Action", "")
        form.pop("Version", None)
        try:
            operation = model.operation_model(action)
        except Exception:
            return None
        params = _query_params(operation, form, protocol)
        if params is None:
            return None
    else:
        return None
    problems = violations(params, operation.input_shape)
    if not problems:
        return None
    error = refusal(service, operation.name, problems)["Error"]
    return error["Code"], error["Message"]
