"""The HTTP face of the offline Kubernetes API: routing, authentication, RBAC and faults.

Serves, over HTTPS on 127.0.0.1, the REST paths of core/v1 (pods, pods/log, pods/status,
services, configmaps, secrets, serviceaccounts; and the cluster-scoped namespaces) and
rbac.authorization.k8s.io/v1 (roles, rolebindings), namespaced: create, get, list (label and field selectors, ``limit`` and
``continue``), update, patch (merge, strategic merge as merge, JSON patch), delete (with
``propagationPolicy``, ``gracePeriodSeconds`` and ``preconditions``) and deletecollection.
Every refusal is a real ``Status`` object (404 NotFound, 409 AlreadyExists or Conflict, 410
Expired, 422 Invalid, 400 BadRequest, 403 Forbidden). What is stored is first decoded and
validated against the official OpenAPI schemas (:mod:`.schemas`; ``fieldValidation`` as the
server takes it), and pods pass Pod Security admission (:mod:`.podsecurity`). Watch is not served: the backend does not use it.

Authentication is by bearer token: the administrator's (the kubeconfig the fake writes) and the
pods' service-account tokens (mounted by the kubelet). Authorization follows RBAC: a service
account may do what the Roles bound to it by RoleBindings in its namespace allow (with
``resourceNames``); the administrator may do everything, or only what ``admin_rules`` allow
(the client Role of the docs, so the tests prove it is enough). Every authorized call is
recorded in :attr:`ApiServer.calls` as ``(user, verb, group, resource, subresource)``.
"""

from __future__ import annotations

import json
import ssl
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from coiled_k8s.offline.store import ApiError, ObjectStore

#: resource -> (kind, group, version)
RESOURCES: dict[str, tuple[str, str, str]] = {
    "pods": ("Pod", "", "v1"),
    "services": ("Service", "", "v1"),
    "configmaps": ("ConfigMap", "", "v1"),
    "secrets": ("Secret", "", "v1"),
    "serviceaccounts": ("ServiceAccount", "", "v1"),
    "roles": ("Role", "rbac.authorization.k8s.io", "v1"),
    "rolebindings": ("RoleBinding", "rbac.authorization.k8s.io", "v1"),
}
#: Cluster-scoped resources served: resource -> (kind, group, version).
CLUSTER_RESOURCES: dict[str, tuple[str, str, str]] = {"namespaces": ("Namespace", "", "v1")}
ADMIN = "kubernetes-admin"
#: A user no rule holds back (the fake's own tests use it).
SUPERUSER = "system:masters"


def rule_allows(rule: dict, verb: str, group: str, resource: str, name: str | None) -> bool:
    """Whether one RBAC PolicyRule allows ``verb`` on ``resource`` (``pods/log`` style) of ``group``."""
    def has(values: list[str] | None, value: str) -> bool:
        return bool(values) and ("*" in values or value in values)

    if not (has(rule.get("verbs"), verb) and has(rule.get("apiGroups"), group) and has(rule.get("resources"), resource)):
        return False
    names = rule.get("resourceNames")
    return not names or (name is not None and name in names)


class ApiServer:
    """The fake API server: a thread serving HTTPS on ``127.0.0.1:<port>``."""

    def __init__(self, store: ObjectStore, tls: ssl.SSLContext, admin_token: str,
                 defaults: dict[str, Callable[[dict], None]], logs: Callable[[str, str, dict], str],
                 admin_rules: list[dict] | None = None):
        self.store, self.admin_token, self.admin_rules = store, admin_token, admin_rules
        self.defaults, self.logs = defaults, logs
        self.tokens: dict[str, str] = {}  # service-account token -> user name
        self.calls: Counter = Counter()
        self._faults: list[dict] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"api": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        # A client that goes away mid-handshake is no error of the server's: no traceback.
        self.httpd.handle_error = lambda request, client_address: None
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="offline-k8s-api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- faults ----------------------------------------------------------------------------
    def inject(self, verb: str, resource: str, code: int, times: int = 1, reason: str | None = None) -> None:
        """Answer the next ``times`` matching requests (by the administrator) with an error ``code``."""
        reasons = {409: "AlreadyExists", 410: "Expired", 500: "InternalError", 403: "Forbidden", 429: "TooManyRequests"}
        with self._lock:
            self._faults.append({"verb": verb, "resource": resource, "code": code, "times": times,
                                 "reason": reason or reasons.get(code, "InternalError")})

    def clear_faults(self) -> None:
        """Forget every injected fault not yet used."""
        with self._lock:
            self._faults.clear()

    def _fault(self, verb: str, resource: str) -> ApiError | None:
        with self._lock:
            for fault in self._faults:
                if fault["verb"] == verb and fault["resource"] == resource and fault["times"] > 0:
                    fault["times"] -= 1
                    return ApiError(fault["code"], fault["reason"], f"injected fault: {fault['reason']}")
        return None

    # -- authorization ---------------------------------------------------------------------
    def authorize(self, user: str, verb: str, group: str, resource: str, namespace: str, name: str | None) -> None:
        if user == SUPERUSER:
            return
        if user == ADMIN:
            if self.admin_rules is None or any(rule_allows(r, verb, group, resource, name) for r in self.admin_rules):
                return
        else:
            _, _, sa_namespace, sa_name = user.split(":", 3)
            if sa_namespace == namespace:
                for _, binding in self.store.find(lambda res, o: res == "rolebindings"
                                                  and o["metadata"]["namespace"] == namespace):
                    subjects = binding.get("subjects") or []
                    if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name
                               and s.get("namespace", namespace) == namespace for s in subjects):
                        continue
                    role = self.store.find(lambda res, o, n=binding["roleRef"]["name"]: res == "roles"
                                           and o["metadata"]["namespace"] == namespace and o["metadata"]["name"] == n)
                    rules = [rule for _, r in role for rule in r.get("rules") or []]
                    if any(rule_allows(rule, verb, group, resource, name) for rule in rules):
                        return
        target = f'{resource} "{name}"' if name else resource
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        raise ApiError(403, "Forbidden", f'{target} is forbidden: User "{user}" cannot {verb} resource '
                       f'"{resource}" in API group "{group}"{where}')

    # -- requests --------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], headers: Any, body: bytes) -> tuple[int, str, bytes]:
        token = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        user = ADMIN if token and token == self.admin_token else self.tokens.get(token)
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif parts[:3] == ["apis", "rbac.authorization.k8s.io", "v1"]:
            group, rest = "rbac.authorization.k8s.io", parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        if group == "" and rest[:1] == ["namespaces"] and len(rest) <= 2:  # the namespaces themselves
            namespace, resource, name, sub = "", "namespaces", rest[1] if len(rest) > 1 else None, None
        elif len(rest) < 3 or rest[0] != "namespaces" or rest[2] not in RESOURCES or RESOURCES[rest[2]][1] != group:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        else:
            namespace, resource, name = rest[1], rest[2], rest[3] if len(rest) > 3 else None
            sub = rest[4] if len(rest) > 4 else None
        verb = {"GET": "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list"),
                "POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}[method]
        full = f"{resource}/{sub}" if sub else resource
        self.authorize(user, verb, group, full, namespace, name)
        with self._lock:
            self.calls[(user, verb, group, full)] += 1
        if user == ADMIN and (fault := self._fault(verb, full)):
            raise fault
        if verb == "watch":
            raise ApiError(405, "MethodNotAllowed", "watch is not served by the offline API")
        kind, _, version = {**RESOURCES, **CLUSTER_RESOURCES}[resource]
        field_validation = query.get("fieldValidation")
        api_version = f"{group}/{version}" if group else version
        payload = json.loads(body) if body else {}
        if sub == "log":
            return 200, "text/plain", self.logs(namespace, name, query).encode()
        if sub not in (None, "status"):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        if verb == "get":
            result = self.store.get(resource, namespace, name)
        elif verb == "list":
            items, rv, token, remaining = self.store.list(
                resource, namespace, query.get("labelSelector"), query.get("fieldSelector"),
                int(query["limit"]) if query.get("limit") else None, query.get("continue"))
            meta: dict[str, Any] = {"resourceVersion": rv}
            if token:
                meta.update({"continue": token, "remainingItemCount": remaining})
            result = {"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta, "items": items}
        elif verb == "create":
            result = self.store.create(resource, kind, api_version, namespace, payload, self.defaults.get(resource),
                                       field_validation)
            return 201, "application/json", json.dumps(result).encode()
        elif verb == "update":
            result = self.store.replace(resource, namespace, name, payload, field_validation)
        elif verb == "patch":
            result = self.store.patch(resource, namespace, name, headers.get("Content-Type", ""), payload,
                                      field_validation)
        elif verb == "delete":
            options = dict(payload)
            for key in ("propagationPolicy", "gracePeriodSeconds"):
                if key in query:
                    options[key] = int(query[key]) if key == "gracePeriodSeconds" else query[key]
            result = self.store.delete(resource, namespace, name, options)
        else:  # deletecollection
            items, _, _, _ = self.store.list(resource, namespace, query.get("labelSelector"))
            for item in items:
                self.store.delete(resource, namespace, item["metadata"]["name"], dict(payload))
            result = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return 200, "application/json", json.dumps(result).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's connection pool reuses connections
    api: ApiServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own output
        pass

    def setup(self) -> None:
        self.request.settimeout(30)
        self.request.do_handshake()  # in this request's thread, not in the accepting one
        super().setup()

    def handle(self) -> None:
        try:
            super().handle()
        except (ssl.SSLError, OSError):
            pass  # a client that went away mid-request

    def _serve(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            code, content_type, reply = self.api.handle(method, url.path, query, self.headers, body)
        except ApiError as e:
            code, content_type, reply = e.code, "application/json", json.dumps(e.status()).encode()
        except Exception as e:  # noqa: BLE001  (a bug in the fake: say so, as a server would)
            error = ApiError(500, "InternalError", f"offline API: {type(e).__name__}: {e}")
            code, content_type, reply = 500, "application/json", json.dumps(error.status()).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")
