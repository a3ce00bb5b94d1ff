"""The object store of the offline Kubernetes API: what etcd and the API server's storage layer do.

Objects are plain dicts in the API's JSON form, keyed by resource, namespace and name. The store
assigns what the server owns (``uid``, ``resourceVersion``, ``creationTimestamp``), answers with
:class:`ApiError` (a ``Status`` object's code, reason and message) where the real server would,
and runs the garbage collector's rules on owner references. Thread-safe: one lock around
everything, and a condition that wakes the kubelet on every change.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

#: What the API server refuses to store in one ConfigMap or Secret.
MAX_DATA_BYTES = 1024 * 1024
#: How long a list's ``continue`` token stays valid (the real one lives until etcd compacts).
CONTINUE_TTL = 300.0

#: Resources whose DELETE answers with the deleted object, not a Status (as their registries do).
RETURNS_DELETED_OBJECT = frozenset({"pods", "services", "serviceaccounts"})
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what the API server's name generator uses


class ApiError(Exception):
    """A request the API refuses: becomes a ``Status`` reply with ``code``."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "details": self.details, "code": self.code,
        }


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def success_status(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": kind, "uid": uid}}


# -- label selectors -------------------------------------------------------------------------
_SET_TERM = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(in|notin)\s*\(([^)]*)\)|(==|=|!=)\s*([\w.-]*))?\s*$")


def parse_selector(text: str | None) -> list[Callable[[dict], bool]]:
    """The terms of a label selector (``a=b,c!=d,e,!f,g in (x,y),h notin (z)``) as predicates."""
    if not text:
        return []
    terms, depth, current = [], 0, ""
    for char in text:  # split on commas outside parentheses
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    predicates = []
    for term in terms:
        match = _SET_TERM.match(term)
        if not match:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        negate, key, set_op, values, op, value = match.groups()
        if set_op:
            members = {v.strip() for v in values.split(",") if v.strip()}
            if set_op == "in":
                predicates.append(lambda labels, k=key, m=members: labels.get(k) in m)
            else:
                predicates.append(lambda labels, k=key, m=members: labels.get(k) not in m)
        elif op in ("=", "=="):
            predicates.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            predicates.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif negate:
            predicates.append(lambda labels, k=key: k not in labels)
        else:
            predicates.append(lambda labels, k=key: k in labels)
    return predicates


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (the fake also applies strategic merge patches this way)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict, operations: list[dict]) -> dict:
    """RFC 6902 JSON patch: add, replace, remove and test."""
    doc = copy.deepcopy(target)
    for op in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        if op["op"] == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise ApiError(422, "Invalid", f"the test operation on {op['path']} failed")
        elif op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), op["value"])
            else:
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ApiError(422, "Invalid", f"unsupported patch operation {op['op']!r}")
    return doc


class ObjectStore:
    """Every object of the fake API, with the server's rules for names, versions and deletion."""

    def __init__(self, continue_ttl: float = CONTINUE_TTL):
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[tuple[str, str, str], dict] = {}  # (resource, namespace, name) -> object
        self.version = 0
        #: The warnings the server sent (undeclared fields it dropped), for tests to read.
        self.warnings: list[str] = []
        self.continue_ttl = continue_ttl
        self._continues: dict[str, tuple[float, list[dict], str]] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _bump(self, obj: dict) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.changed.notify_all()

    def get(self, resource: str, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self.objects.get((resource, namespace, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})
            return copy.deepcopy(obj)

    def find(self, predicate: Callable[[str, dict], bool]) -> list[tuple[str, dict]]:
        """(resource, object) for every object for which ``predicate(resource, obj)`` holds (copies)."""
        with self.lock:
            return [(key[0], copy.deepcopy(obj)) for key, obj in self.objects.items() if predicate(key[0], obj)]

    def uids(self) -> set[str]:
        with self.lock:
            return {obj["metadata"]["uid"] for obj in self.objects.values()}

    # -- create, update, patch -------------------------------------------------------------
    def create(self, resource: str, kind: str, api_version: str, namespace: str, body: dict,
               defaults: Callable[[dict], None] | None = None, field_validation: str | None = None) -> dict:
        """Store a new object (``namespace`` "" for a cluster-scoped one) after decoding,
        validation and admission (Pod Security, for pods), as the API server does."""
        from coiled_k8s.offline import podsecurity

        meta = body.setdefault("metadata", {})
        with self.lock:
            if namespace and ("namespaces", "", namespace) not in self.objects:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                               {"name": namespace, "kind": "namespaces"})
            generated = not meta.get("name") and meta.get("generateName")
            if not meta.get("name") and meta.get("generateName"):
                for _ in range(8):  # as the real server, retry a generated name that is taken
                    name = meta["generateName"] + "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
                    if (resource, namespace, name) not in self.objects:
                        break
                meta["name"] = name
            name = meta.get("name")
            body["kind"], body["apiVersion"] = kind, api_version
            warnings = self._validate(resource, kind, body, field_validation)
            if (resource, namespace, name) in self.objects:
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists',
                               {"name": name, "kind": resource})
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339())
            if namespace:
                meta["namespace"] = namespace
            for field in ("deletionTimestamp", "resourceVersion"):
                meta.pop(field, None)
            if defaults:
                defaults(body)
            if resource == "pods":  # a validating admission plugin: after defaults and validation
                podsecurity.check(self.objects.get(("namespaces", "", namespace)), body,
                                  meta["generateName"] if generated else name)
            self.objects[(resource, namespace, name)] = body
            self._bump(body)
            self.warnings += warnings
            return copy.deepcopy(body)

    def _validate(self, resource: str, kind: str, body: dict, field_validation: str | None = None) -> list[str]:
        """Decode and validate ``body`` as the API server does; the warnings it would send.

        First the decoding, against the official schemas (see :mod:`.schemas`): a value of the
        wrong type is a 400, an undeclared field a 400 with ``fieldValidation=Strict`` and else
        dropped (with a warning unless ``Ignore``). Then the validation: the schemas' required
        fields and enums and the server's own rules below, all in one 422 Invalid."""
        from coiled_k8s.offline import schemas

        meta = body["metadata"]
        name = meta.get("name")
        checked = {k: v for k, v in body.items() if k != "status"}  # status is not the client's to set
        warnings: list[str] = []
        causes: list[dict] = []
        for version in schemas.VERSIONS:
            unknown = schemas.unknown_fields(checked, version)
            names = [schemas.field_name(path, key) for path, key in unknown]
            if names and field_validation == "Strict":
                raise ApiError(400, "BadRequest", f'{kind} in version "{body["apiVersion"].rsplit("/", 1)[-1]}" cannot be '
                               f"handled as a {kind}: strict decoding error: "
                               + ", ".join(f'unknown field "{n}"' for n in names))
            for path, key in unknown:
                schemas.drop(body, path, key)
                schemas.drop(checked, path, key)
            if field_validation != "Ignore":
                warnings += [f'unknown field "{n}"' for n in names if f'unknown field "{n}"' not in warnings]
            found, decoding = schemas.problems(checked, version)
            if decoding:
                raise ApiError(400, "BadRequest", f'{kind} in version "{body["apiVersion"].rsplit("/", 1)[-1]}" cannot be '
                               f"handled as a {kind}: {decoding[0]}")
            causes += [c for c in found if c not in causes]
        problems = [f"{c['field']}: {c['message']}" for c in causes]
        if not name:
            problems.append("metadata.name: Required value: name or generateName is required")
        elif resource == "services" and not (_DNS1035_LABEL.match(name) and len(name) <= 63):
            problems.append(f"metadata.name: Invalid value: {name!r}: a DNS-1035 label must consist of lower case "
                            "alphanumeric characters or '-', start with an alphabetic character, and end with an "
                            "alphanumeric character")
        elif not (_DNS1123_SUBDOMAIN.match(name) and len(name) <= 253):
            problems.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain must consist of "
                            "lower case alphanumeric characters, '-' or '.'")
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
                problems.append(f"metadata.labels: Invalid value: {value!r}: a valid label must be an empty string "
                                "or consist of alphanumeric characters, '-', '_' or '.', at most 63 characters")
            if len(key.rpartition("/")[2]) > 63:
                problems.append(f"metadata.labels: Invalid value: {key!r}: name part must be no more than 63 characters")
        problems += _enum_problems(resource, body)
        if resource == "services":
            problems += _source_range_problems(body.get("spec") or {})
        if resource in ("configmaps", "secrets"):
            size = sum(len(v.encode()) for v in (body.get("data") or {}).values())
            size += sum(len(base64.b64decode(v)) for v in (body.get("binaryData") or {}).values())
            if resource == "secrets":
                size += sum(len(v.encode()) for v in (body.get("stringData") or {}).values())
            if size > MAX_DATA_BYTES:
                problems.append(f"[]: Too long: must have at most {MAX_DATA_BYTES} bytes")
        if resource == "pods":
            for index, container in enumerate((body.get("spec") or {}).get("containers") or []):
                if not container.get("image"):
                    problems.append(f"spec.containers[{index}].image: Required value")
        if problems:
            causes = [_cause(p) for p in problems]
            text = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
            raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}',
                           {"name": name, "kind": kind, "causes": causes})
        return warnings

    def replace(self, resource: str, namespace: str, name: str, body: dict, field_validation: str | None = None) -> dict:
        with self.lock:
            current = self.objects.get((resource, namespace, name))
            if current is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})
            meta = body.setdefault("metadata", {})
            wanted = meta.get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": the object has '
                               "been modified; please apply your changes to the latest version and try again",
                               {"name": name, "kind": resource})
            for field in ("uid", "creationTimestamp", "namespace", "deletionTimestamp", "finalizers"):
                if field in current["metadata"]:
                    meta[field] = current["metadata"][field]
            body["kind"], body["apiVersion"] = current["kind"], current["apiVersion"]
            if resource == "pods":  # status is the kubelet's; spec mostly immutable (not checked here)
                body["status"] = current.get("status", {})
            self.warnings += self._validate(resource, current["kind"], body, field_validation)
            self.objects[(resource, namespace, name)] = body
            self._bump(body)
            return copy.deepcopy(body)

    def patch(self, resource: str, namespace: str, name: str, content_type: str, patch: Any,
              field_validation: str | None = None) -> dict:
        with self.lock:
            current = self.get(resource, namespace, name)
            if "json-patch" in content_type:
                updated = json_patch(current, patch)
            else:
                updated = merge_patch(current, patch)
            wanted = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
            updated["metadata"]["resourceVersion"] = wanted or current["metadata"]["resourceVersion"]
            return self.replace(resource, namespace, name, updated, field_validation)

    def update_status(self, resource: str, namespace: str, name: str, change: Callable[[dict], None]) -> None:
        """The kubelet's way in: change an object in place (no copy), if it still exists."""
        with self.lock:
            obj = self.objects.get((resource, namespace, name))
            if obj is not None:
                change(obj)
                self._bump(obj)

    # -- list ------------------------------------------------------------------------------
    def list(self, resource: str, namespace: str | None, label_selector: str | None = None,
             field_selector: str | None = None, limit: int | None = None, continue_token: str | None = None,
             ) -> tuple[list[dict], str, str | None, int | None]:
        """(items, resourceVersion, continue token, remaining item count) of one page."""
        with self.lock:
            if continue_token:
                entry = self._continues.pop(continue_token, None)
                if entry is None or entry[0] < time.monotonic():
                    raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                                   "consistent list result. You can start a new list without the continue parameter.")
                _, items, version = entry
            else:
                predicates = parse_selector(label_selector)
                fields = [tuple(term.split("=", 1)) for term in (field_selector or "").split(",") if "=" in term]
                items = [
                    copy.deepcopy(obj) for (res, ns, _), obj in sorted(self.objects.items())
                    if res == resource and (namespace is None or ns == namespace)
                    and all(p(obj["metadata"].get("labels") or {}) for p in predicates)
                    and all(_field(obj, path.rstrip("=").rstrip("!")) == value for path, value in fields)
                ]
                version = str(self.version)
            if limit and len(items) > limit:
                token = base64.urlsafe_b64encode(json.dumps({"rv": version, "n": secrets.token_hex(8)}).encode()).decode()
                self._continues[token] = (time.monotonic() + self.continue_ttl, items[limit:], version)
                return items[:limit], version, token, len(items) - limit
            return items, version, None, None

    def expire_continue_tokens(self) -> None:
        """Forget every ``continue`` token (as an etcd compaction would): their next use gets 410."""
        with self.lock:
            self._continues.clear()

    # -- delete and garbage collection -----------------------------------------------------
    def delete(self, resource: str, namespace: str, name: str, options: dict) -> dict:
        """Delete as the API server does. Pods terminate gracefully (the kubelet removes them),
        Foreground deletion waits for the dependents; the reply is the object while it lingers,
        else a ``Status``."""
        with self.lock:
            obj = self.get(resource, namespace, name)
            meta = obj["metadata"]
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {pre['uid']}, "
                               f"UID in object meta: {meta['uid']}", {"name": name, "kind": resource})
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise ApiError(409, "Conflict", f"Precondition failed: ResourceVersion in precondition: "
                               f"{pre['resourceVersion']}, ResourceVersion in object meta: {meta['resourceVersion']}",
                               {"name": name, "kind": resource})
            policy = options.get("propagationPolicy") or "Background"
            stored = self.objects[(resource, namespace, name)]
            if policy == "Orphan":
                for other in self.objects.values():
                    refs = other["metadata"].get("ownerReferences") or []
                    if any(r["uid"] == meta["uid"] for r in refs):
                        other["metadata"]["ownerReferences"] = [r for r in refs if r["uid"] != meta["uid"]]
                        self._bump(other)
            if policy == "Foreground" and self._dependents(meta["uid"]):
                stored["metadata"].setdefault("deletionTimestamp", now_rfc3339())
                stored["metadata"]["finalizers"] = sorted({*stored["metadata"].get("finalizers", []), "foregroundDeletion"})
                self._bump(stored)
                return copy.deepcopy(stored)
            grace = options.get("gracePeriodSeconds")
            if resource == "pods" and (stored.get("spec") or {}).get("nodeName") and grace != 0:
                # A grace period of 0 deletes at once (a forced deletion: the kubelet then kills
                # the containers of a pod it no longer finds); else the kubelet ends it first.
                if grace is None:
                    grace = stored["spec"].get("terminationGracePeriodSeconds", 30)
                if "deletionTimestamp" not in stored["metadata"] or grace < stored["metadata"].get(
                        "deletionGracePeriodSeconds", grace + 1):
                    stored["metadata"].setdefault("deletionTimestamp", now_rfc3339())
                    stored["metadata"]["deletionGracePeriodSeconds"] = int(grace)
                    self._bump(stored)
                return copy.deepcopy(stored)  # the kubelet removes it once its processes ended
            self.remove(resource, namespace, name)
            if resource in RETURNS_DELETED_OBJECT:
                return obj
            return success_status(obj["kind"], name, meta["uid"])

    def remove(self, resource: str, namespace: str, name: str) -> None:
        """Drop an object for good (the end of a deletion)."""
        with self.lock:
            if self.objects.pop((resource, namespace, name), None) is not None:
                self.version += 1
                self.changed.notify_all()

    def _dependents(self, uid: str, blocking: bool = False) -> list[tuple[str, str, str]]:
        """Keys of the objects ``uid`` owns (``blocking``: only those whose reference says
        ``blockOwnerDeletion``, the only ones a foreground deletion waits for)."""
        return [key for key, obj in self.objects.items()
                if any(r["uid"] == uid and (r.get("blockOwnerDeletion") or not blocking)
                       for r in obj["metadata"].get("ownerReferences") or [])]

    def collect_garbage(self) -> None:
        """One pass of the garbage collector: delete objects whose owners are all gone or being
        deleted in the foreground, and finish the foreground deletions that no dependent blocks
        (only a reference with ``blockOwnerDeletion: true`` does: the others' deletion has been
        issued, and the owner goes without waiting for it to end)."""
        with self.lock:
            live = {obj["metadata"]["uid"]: obj for obj in self.objects.values()}
            foreground = {uid for uid, obj in live.items()
                          if "foregroundDeletion" in (obj["metadata"].get("finalizers") or [])}
            for (resource, namespace, name), obj in list(self.objects.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if not refs or ("deletionTimestamp" in obj["metadata"] and resource != "pods"):
                    continue
                owners_gone = all(r["uid"] not in live for r in refs)
                doomed = owners_gone or any(r["uid"] in foreground for r in refs)
                if doomed and "deletionTimestamp" not in obj["metadata"]:
                    self.delete(resource, namespace, name, {"propagationPolicy": "Background"})
            for (resource, namespace, name), obj in list(self.objects.items()):
                if obj["metadata"]["uid"] in foreground and not self._dependents(obj["metadata"]["uid"], blocking=True):
                    self.remove(resource, namespace, name)


#: Values the API server's validation accepts (the OpenAPI schemas state no enums): path -> values.
_ENUMS = {
    "services": {"spec.type": ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort"),
                 "spec.ports[*].protocol": ("SCTP", "TCP", "UDP"),
                 "spec.externalTrafficPolicy": ("Cluster", "Local")},
    "pods": {"spec.restartPolicy": ("Always", "Never", "OnFailure"),
             "spec.containers[*].imagePullPolicy": ("Always", "IfNotPresent", "Never"),
             "spec.containers[*].ports[*].protocol": ("SCTP", "TCP", "UDP"),
             "spec.securityContext.seccompProfile.type": ("Localhost", "RuntimeDefault", "Unconfined"),
             "spec.containers[*].securityContext.seccompProfile.type": ("Localhost", "RuntimeDefault", "Unconfined")},
}


def _values(node: Any, parts: list[str], path: str) -> list[tuple[str, Any]]:
    """(path, value) of each value at ``parts`` (``name[*]`` steps into every item of a list)."""
    if not parts:
        return [(path, node)]
    part, rest = parts[0], parts[1:]
    if not isinstance(node, dict):
        return []
    if part.endswith("[*]"):
        key = part[:-3]
        return [found for i, item in enumerate(node.get(key) or [])
                for found in _values(item, rest, f"{path}.{key}[{i}]".lstrip("."))]
    if part not in node:
        return []
    return _values(node[part], rest, f"{path}.{part}".lstrip("."))


_CAUSE_REASONS = {"Required value": "FieldValueRequired", "Unsupported value": "FieldValueNotSupported",
                  "Forbidden": "FieldValueForbidden", "Too long": "FieldValueTooLong"}


def _cause(problem: str) -> dict[str, str]:
    """One entry of a 422's ``details.causes``, from ``<field>: <message>``."""
    field, _, message = problem.partition(": ")
    reason = next((r for prefix, r in _CAUSE_REASONS.items() if message.startswith(prefix)), "FieldValueInvalid")
    return {"reason": reason, "message": message, "field": field}


def _enum_problems(resource: str, body: dict) -> list[str]:
    problems = []
    for path, allowed in _ENUMS.get(resource, {}).items():
        for where, value in _values(body, path.split("."), ""):
            if value is not None and value not in allowed:
                problems.append(f"{where}: Unsupported value: {json.dumps(value)}: supported values: "
                                + ", ".join(f'"{v}"' for v in allowed))
    return problems


def _source_range_problems(spec: dict) -> list[str]:
    """The server's rules for ``loadBalancerSourceRanges``: CIDRs, and only on a LoadBalancer."""
    import ipaddress

    ranges = spec.get("loadBalancerSourceRanges") or []
    problems = []
    if ranges and spec.get("type") != "LoadBalancer":
        problems.append("spec.loadBalancerSourceRanges: Forbidden: may only be used when `type` is 'LoadBalancer'")
    for i, value in enumerate(ranges):
        try:
            ipaddress.ip_network(str(value).strip(), strict=False)
            if "/" not in str(value):
                raise ValueError
        except ValueError:
            problems.append(f"spec.loadBalancerSourceRanges[{i}]: Invalid value: {json.dumps(value)}: must be a list "
                            "of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24 ")
    return problems


def _field(obj: dict, path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None else str(value)
