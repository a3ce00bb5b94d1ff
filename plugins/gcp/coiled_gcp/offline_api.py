"""Google's own descriptions of the APIs the offline stand-in serves, and the checks they imply.

Test code, like :mod:`coiled_gcp.offline` (which uses it): it reads the discovery documents that
``google-api-python-client`` ships (``compute.v1``, ``storage.v1``, ``secretmanager.v1``, ``iam.v1``,
``cloudresourcemanager.v1``; a test
dependency of this plugin), so the stand-in is held to Google's description of each method, not to
this project's reading of it.

:class:`Discovery` routes a request to its method (``compute.instances.bulkInsert``...) by the
paths the document gives, and checks, recursively:

* requests: unknown fields, JSON types (int64 and uint64 are strings in the documents; a number is
  accepted too, as Google's JSON parser does), enum values, fields the document marks required for
  that method (``annotations.required``, or a description that starts "Required."), path and query parameters (required, type, enum, path patterns; an unknown query
  parameter is refused by Compute Engine and Secret Manager, which cannot bind it), and the rules the
  field descriptions state in prose that the backend depends on (:data:`PROSE_RULES`);
* replies: the method's response schema (unknown fields, types, enums), so the stand-in cannot drift
  from what the real service returns.

A refused request raises :class:`ApiError`, carrying the status and the error shape the real
service answers with.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Callable

#: Service name -> (discovery document, URL prefixes under which the stand-in serves it).
SERVICES = {
    "compute": ("compute.v1.json", ("/compute/v1/",)),
    "storage": ("storage.v1.json", ("/storage/v1/", "/upload/storage/v1/", "/download/storage/v1/")),
    "secretmanager": ("secretmanager.v1.json", ("/",)),
    # IAM and Resource Manager share Secret Manager's ``/v1/projects/`` paths on the stand-in's
    # one endpoint; each method's own path template tells them apart.
    "iam": ("iam.v1.json", ("/",)),
    "cloudresourcemanager": ("cloudresourcemanager.v1.json", ("/",)),
}
#: System parameters Google's front end accepts on every method beyond the documents' own
#: (the Cloud client libraries send ``$alt``).
SYSTEM_PARAMETERS = {"$alt", "$fields", "$prettyPrint", "$callback", "$key"}
#: Services whose front end refuses a query parameter it cannot bind to the request.
STRICT_QUERY = {"compute", "secretmanager"}
_INT_FORMATS = {"int64", "uint64"}


class ApiError(Exception):
    """A request the real service refuses: ``status`` and ``reason`` as it answers them.

    ``operation_code``: the service accepts the request and reports this error code in the
    operation it returns (Compute Engine reports errors of mutations that way).
    """

    def __init__(self, status: int, reason: str, message: str, operation_code: str | None = None, *, status_name: str | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.operation_code = status, reason, message, operation_code
        self.status_name = status_name  # the canonical code Google adds, e.g. PERMISSION_DENIED

    def body(self) -> dict:
        """The error reply of Google's JSON APIs."""
        error = {"code": self.status, "message": self.message, "errors": [{"reason": self.reason, "message": self.message, "domain": "global"}]}
        if self.status_name:
            error["status"] = self.status_name
        return {"error": error}


@dataclass
class Route:
    """A request matched to its method."""

    service: str
    method: dict
    params: dict[str, str]
    media: bool = False  # an upload or download of media, not a JSON body

    @property
    def id(self) -> str:
        return self.method["id"]


@dataclass
class _Check:
    """One walk of a value against a schema."""

    api: Discovery
    method_id: str
    request: bool
    problems: list[ApiError] = field(default_factory=list)

    def fail(self, reason: str, message: str, status: int = 400, operation_code: str | None = None) -> None:
        self.problems.append(ApiError(status, reason, message, operation_code))

    def value(self, schema: dict, value: Any, where: str) -> None:
        name = schema.get("$ref")
        if name:
            schema = self.api.schemas[name]
        kind = schema.get("type")
        if kind == "object" or "properties" in schema or "additionalProperties" in schema:
            self._object(schema, value, where)
        elif kind == "array":
            if not isinstance(value, list):
                return self.fail("invalid", f"Invalid value at '{where}' (an array was expected), {json.dumps(value)[:80]}")
            for i, item in enumerate(value):
                self.value(schema.get("items", {}), item, f"{where}[{i}]")
        elif kind == "string":
            self._string(schema, value, where)
        elif kind == "integer":
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value))):
                self.fail("invalid", f"Invalid value at '{where}' (TYPE_INT32), {json.dumps(value)[:80]}")
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                self.fail("invalid", f"Invalid value at '{where}' (TYPE_DOUBLE), {json.dumps(value)[:80]}")
        elif kind == "boolean":
            if not isinstance(value, bool):
                self.fail("invalid", f"Invalid value at '{where}' (TYPE_BOOL), {json.dumps(value)[:80]}")
        if name:
            for rule in PROSE_RULES.get(name, ()):
                rule(self, value, where)

    def _object(self, schema: dict, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            return self.fail("invalid", f"Invalid value at '{where}' (an object was expected), {json.dumps(value)[:80]}")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                self.value(properties[key], item, f"{where}.{key}" if where else key)
            elif extra is not None:
                self.value(extra, item, f"{where}.{key}" if where else key)
            else:
                self.fail("invalid", f"Invalid JSON payload received. Unknown name \"{key}\" at '{where or 'resource'}': Cannot find field.")
        if self.request:
            for key, prop in properties.items():
                if key not in value and _required(prop, self.method_id):
                    self.fail("required", f"Required field '{where + '.' if where else ''}{key}' not specified", status=400)

    def _string(self, schema: dict, value: Any, where: str) -> None:
        fmt = schema.get("format")
        if fmt in _INT_FORMATS:
            ok = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value))
            if not ok:
                self.fail("invalid", f"Invalid value at '{where}' (TYPE_{fmt.upper()}), {json.dumps(value)[:80]}")
            return
        if not isinstance(value, str):
            return self.fail("invalid", f"Invalid value at '{where}' (TYPE_STRING), {json.dumps(value)[:80]}")
        if fmt == "byte":
            try:
                base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                self.fail("invalid", f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed for {value[:40]!r}")
        enum = schema.get("enum")
        if enum and value not in enum:
            self.fail("invalid", f"Invalid value at '{where}' (enum), {json.dumps(value)[:80]}; valid: {', '.join(enum)}")


def _required(spec: dict, method_id: str) -> bool:
    """Required for this method: marked so, listed in ``annotations.required``, or described as
    "Required." (the convention of Google's resource-oriented APIs, Secret Manager's among them)."""
    return bool(
        spec.get("required") or method_id in spec.get("annotations", {}).get("required", ()) or spec.get("description", "").startswith("Required.")
    )


# -- the rules the descriptions state in prose -------------------------------------------------
def _instance_properties(check: _Check, value: Any, where: str) -> None:
    """InstanceProperties.machineType: "This field only accepts a machine type name, for example
    `n2-standard-4`. If you use the machine type full or partial URL, ... the request will result in
    an `INTERNAL_ERROR`." AcceleratorConfig.acceleratorType: "If you are creating an instance
    template, specify only the accelerator name" (InstanceProperties is what a template holds)."""
    if not check.request or not isinstance(value, dict):
        return
    machine_type = value.get("machineType")
    if isinstance(machine_type, str) and "/" in machine_type:
        check.fail(
            "internalError",
            f"Internal error. '{where}.machineType' is {machine_type!r}: this field accepts only a machine type name",
            status=500,
            operation_code="INTERNAL_ERROR",
        )
    for i, accelerator in enumerate(value.get("guestAccelerators") or []):
        kind = accelerator.get("acceleratorType") if isinstance(accelerator, dict) else None
        if isinstance(kind, str) and "/" in kind:
            check.fail("invalid", f"Invalid value for field '{where}.guestAccelerators[{i}].acceleratorType': {kind!r}. Specify only the accelerator name.")


_ZONAL_URL = r"(?:(?:https://[^/]+/compute/v1/|https?://[^/]+/compute/v1/)?projects/[^/]+/)?zones/([^/]+)/{kind}/([^/]+)"


def _instance(check: _Check, value: Any, where: str) -> None:
    """Instance.machineType: "Full or partial URL of the machine type resource ... in the format
    zones/zone/machineTypes/machine-type"; AcceleratorConfig.acceleratorType in an instance: "Full
    or partial URL of the accelerator type resource"."""
    if not check.request or not isinstance(value, dict):
        return
    machine_type = value.get("machineType")
    if isinstance(machine_type, str) and not re.fullmatch(_ZONAL_URL.format(kind="machineTypes"), machine_type):
        check.fail("invalid", f"Invalid value for field 'resource.machineType': {machine_type!r}. Invalid URL: a full or partial URL zones/ZONE/machineTypes/TYPE is expected.")
    for i, accelerator in enumerate(value.get("guestAccelerators") or []):
        kind = accelerator.get("acceleratorType") if isinstance(accelerator, dict) else None
        if isinstance(kind, str) and not re.fullmatch(_ZONAL_URL.format(kind="acceleratorTypes"), kind):
            check.fail("invalid", f"Invalid value for field 'resource.guestAccelerators[{i}].acceleratorType': {kind!r}. Invalid URL.")


def _scheduling(check: _Check, value: Any, where: str) -> None:
    """Scheduling.onHostMaintenance: "For preemptible instances, the default and only possible
    behavior is TERMINATE"; automaticRestart: "Preemptible instances cannot be automatically
    restarted" (Spot VMs are preemptible)."""
    if not check.request or not isinstance(value, dict):
        return
    if value.get("provisioningModel") == "SPOT" or value.get("preemptible") is True:
        if value.get("onHostMaintenance") == "MIGRATE":
            check.fail("invalid", f"Invalid value for field '{where}.onHostMaintenance': 'MIGRATE'. Preemptible and Spot instances can only TERMINATE on host maintenance.")
        if value.get("automaticRestart") is True:
            check.fail("invalid", f"Invalid value for field '{where}.automaticRestart': 'true'. Preemptible and Spot instances cannot be automatically restarted.")


def _address(check: _Check, value: Any, where: str) -> None:
    """Address.subnetwork: "This field can only be used with INTERNAL type with a GCE_ENDPOINT or
    DNS_RESOLVER purpose"."""
    if not check.request or not isinstance(value, dict) or not value.get("subnetwork"):
        return
    if value.get("addressType") != "INTERNAL" or value.get("purpose", "GCE_ENDPOINT") not in ("GCE_ENDPOINT", "DNS_RESOLVER"):
        check.fail("invalid", f"Invalid value for field 'resource.subnetwork': {value['subnetwork']!r}. A subnetwork is only for INTERNAL addresses of purpose GCE_ENDPOINT or DNS_RESOLVER.")


def _bulk_insert(check: _Check, value: Any, where: str) -> None:
    """BulkInsertInstanceResource: "Either name_pattern or per_instance_properties must be set";
    instanceProperties is "Required if sourceInstanceTemplate is not provided"."""
    if not check.request or not isinstance(value, dict):
        return
    if not value.get("namePattern") and not value.get("perInstanceProperties"):
        check.fail("required", "Either namePattern or perInstanceProperties must be set")
    if "instanceProperties" not in value and not value.get("sourceInstanceTemplate"):
        check.fail("required", "Required field 'instanceProperties' not specified (no sourceInstanceTemplate is given)")


#: Schema name -> checks of the rules its field descriptions state in prose.
PROSE_RULES: dict[str, tuple[Callable[[_Check, Any, str], None], ...]] = {
    "InstanceProperties": (_instance_properties,),
    "Instance": (_instance,),
    "Scheduling": (_scheduling,),
    "Address": (_address,),
    "BulkInsertInstanceResource": (_bulk_insert,),
}


# -- the documents -------------------------------------------------------------------------------
def _template_regex(template: str) -> tuple[re.Pattern, int]:
    """``projects/{project}/zones/{zone}`` -> a regex with one group per parameter, and how many
    literal characters it has (the more, the more specific)."""
    pattern, literal, last = "", 0, 0
    for m in re.finditer(r"\{(\+?)([^}]+)\}", template):
        text = template[last : m.start()]
        pattern += re.escape(text)
        literal += len(text)
        pattern += f"(?P<{_group(m.group(2))}>{'.+' if m.group(1) else '[^/]+'})"
        last = m.end()
    pattern += re.escape(template[last:])
    literal += len(template) - last
    return re.compile(pattern), literal


def _group(name: str) -> str:
    return re.sub(r"\W", "_", name)


class Discovery:
    """One discovery document: its methods by path, its schemas, and the checks above."""

    def __init__(self, service: str):
        document, self.prefixes = SERVICES[service]
        source = resources.files("googleapiclient") / "discovery_cache" / "documents" / document
        self.doc = json.loads(source.read_text())
        self.service = service
        self.schemas: dict[str, dict] = self.doc["schemas"]
        self.parameters: dict[str, dict] = self.doc.get("parameters", {})
        self.methods: dict[str, dict] = {}
        self._routes: list[tuple[int, str, re.Pattern, dict, bool]] = []
        self._walk(self.doc)
        self._routes.sort(key=lambda r: -r[0])

    def _walk(self, node: dict) -> None:
        for method in node.get("methods", {}).values():
            self.methods[method["id"]] = method
            path = method.get("flatPath") or method["path"]
            regex, literal = _template_regex(self.doc["servicePath"] + path)
            self._routes.append((literal, method["httpMethod"], regex, method, False))
            simple = method.get("mediaUpload", {}).get("protocols", {}).get("simple", {}).get("path")
            if simple:
                regex, literal = _template_regex(simple.lstrip("/"))
                self._routes.append((literal, method["httpMethod"], regex, method, True))
        for child in node.get("resources", {}).values():
            self._walk(child)

    def route(self, http_method: str, path: str) -> Route | None:
        """The method serving ``http_method`` ``path`` (the URL path, still percent-encoded)."""
        relative = path.lstrip("/")
        media = relative.startswith("download/")
        if media:
            relative = relative[len("download/") :]
        for _, verb, regex, method, upload in self._routes:
            if verb != http_method:
                continue
            m = regex.fullmatch(relative)
            if m:
                return Route(self.service, method, m.groupdict(), media or upload)
        return None

    def check_request(self, route: Route, query: dict[str, str], body: Any) -> None:
        """Raise :class:`ApiError` (the first problem) if the real service refuses the request."""
        check = _Check(self, route.id, request=True)
        method = route.method
        parameters = method.get("parameters", {})
        for name, spec in parameters.items():
            where = spec.get("location")
            value = route.params.get(_group(name)) if where == "path" else query.get(name)
            if value is None:
                if where == "query" and _required(spec, route.id):
                    check.fail("required", f"Required parameter: {name}")
                continue
            self._parameter(check, name, spec, value)
        for name, value in query.items():
            if name in parameters:
                continue
            if name in self.parameters:
                self._parameter(check, name, self.parameters[name], value)
            elif self.service in STRICT_QUERY and name not in SYSTEM_PARAMETERS:
                check.fail("invalid", f"Invalid JSON payload received. Unknown name \"{name}\": Cannot bind query parameter. Field '{name}' could not be found in request message.")
        request = method.get("request")
        if request and not route.media:
            if body is None:
                body = {}
            check.value(request, body, "")
        elif body not in (None, {}) and not route.media and method["httpMethod"] in ("GET", "DELETE"):
            check.fail("invalid", f"{route.id} takes no request body")
        _raise_first(check)

    def _parameter(self, check: _Check, name: str, spec: dict, value: str) -> None:
        kind = spec.get("type")
        if kind == "integer" or spec.get("format") in _INT_FORMATS:
            if not re.fullmatch(r"-?\d+", value):
                check.fail("invalid", f"Invalid value for parameter '{name}': {value!r} (an integer is expected)")
        elif kind == "boolean":
            if value not in ("true", "false", "True", "False", "1", "0"):
                check.fail("invalid", f"Invalid value for parameter '{name}': {value!r} (a boolean is expected)")
        if spec.get("enum") and value not in spec["enum"]:
            check.fail("invalid", f"Invalid value for parameter '{name}': {value!r}; valid: {', '.join(spec['enum'])}")
        pattern = spec.get("pattern")
        if pattern and spec.get("location") == "path" and not re.fullmatch(pattern, value):
            check.fail("invalid", f"Invalid value for parameter '{name}': {value!r} does not match {pattern}")

    def check_response(self, route: Route, body: Any) -> list[str]:
        """What in ``body`` (the stand-in's reply to ``route``) the method's response schema does
        not describe: an empty list when it matches."""
        response = route.method.get("response")
        if response is None or route.media and not isinstance(body, dict):
            return []
        check = _Check(self, route.id, request=False)
        check.value(response, body, "")
        return [p.message for p in check.problems]


def _raise_first(check: _Check) -> None:
    if check.problems:
        # The service answers with one error; a rule the description states wins over the rest.
        raise next((p for p in check.problems if p.operation_code), check.problems[0])


@cache
def discovery(service: str) -> Discovery:
    """The document of ``service`` (a key of :data:`SERVICES`), read once."""
    return Discovery(service)


def route(http_method: str, path: str) -> Route | None:
    """The method of any of the services the stand-in serves that serves ``path``."""
    if path.startswith("/compute/v1/"):
        return discovery("compute").route(http_method, path)
    if path.startswith(SERVICES["storage"][1]):
        return discovery("storage").route(http_method, path)
    if path.startswith("/v1/"):
        for service in ("secretmanager", "iam", "cloudresourcemanager"):
            found = discovery(service).route(http_method, path)
            if found is not None:
                return found
    return None
