"""The kubernetes client, made once per kubeconfig and context, and the few helpers every call needs.

``kubernetes`` is imported here, inside functions, so that ``import coiled_k8s`` (and listing the
backends) stays cheap. The code works with the client's pydantic models (v37) and the older ones.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: Worker threads for calls issued concurrently (pod creation, deletion, logs).
CONCURRENCY = 16
_IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
_clients: dict[tuple[str | None, str | None], tuple[Any, str]] = {}
_lock = threading.Lock()


@dataclass
class Kube:
    """The APIs a hook uses, and the namespace it works in."""

    core: Any  # kubernetes.client.CoreV1Api
    rbac: Any  # kubernetes.client.RbacAuthorizationV1Api
    namespace: str


def connect(options: Any) -> Kube:
    """The APIs for ``options`` (kubeconfig, context, namespace), made once per process."""
    key = (options.kubeconfig, options.context)
    with _lock:
        if key not in _clients:
            _clients[key] = _new_client(options.kubeconfig, options.context)
        api_client, namespace = _clients[key]
    from kubernetes import client

    return Kube(client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client), options.namespace or namespace)


def _new_client(kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    from kubernetes import client, config

    configuration = client.Configuration()
    namespace = "default"
    in_cluster = not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(_IN_CLUSTER_TOKEN)
    if in_cluster:
        config.load_incluster_config(client_configuration=configuration)
        with open(_IN_CLUSTER_NAMESPACE) as f:
            namespace = f.read().strip() or namespace
    else:
        path = os.path.expanduser(kubeconfig or os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0])
        config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
        _, active = config.list_kube_config_contexts(config_file=path)
        if context:
            active = next(c for c in config.list_kube_config_contexts(config_file=path)[0] if c["name"] == context)
        namespace = (active.get("context") or {}).get("namespace") or namespace
    # Enough pooled connections for the calls issued concurrently.
    configuration.connection_pool_maxsize = CONCURRENCY
    return client.ApiClient(configuration), namespace


def status_of(error: BaseException) -> int | None:
    """The HTTP status of a kubernetes ``ApiException`` (None for anything else)."""
    from kubernetes.client.exceptions import ApiException

    return error.status if isinstance(error, ApiException) else None


def reason_of(error: BaseException) -> str:
    """The API's own message of a failed call (its ``Status``), or the error's text."""
    import json

    body = getattr(error, "body", None)
    try:
        return json.loads(body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(error).strip()


def ignore_missing(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(...)``, or None if the object is not there (404)."""
    try:
        return call(*args, **kwargs)
    except Exception as e:
        if status_of(e) == 404:
            return None
        raise


def retrying(call: Callable[..., Any], *args: Any, attempts: int = 4, **kwargs: Any) -> Any:
    """``call(...)``, again after a short wait when the server answers 429, 500, 503 or 504."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as e:
            if status_of(e) not in (429, 500, 502, 503, 504) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)


def pod_log(core: Any, name: str, namespace: str, tail: int | None = None) -> str:
    """A pod's log as text. Read raw: some client versions hand back ``str(bytes)`` for text/plain."""
    kwargs = {"tail_lines": tail} if tail else {}
    response = core.read_namespaced_pod_log(name, namespace, _preload_content=False, **kwargs)
    data = response.data if hasattr(response, "data") else response.read()
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def list_all(list_call: Callable[..., Any], namespace: str, label_selector: str, page: int = 500) -> Iterator[Any]:
    """Every object ``list_call`` returns, page by page; a ``continue`` token that expired (410)
    starts the list again, as the API asks."""
    seen: set[str] = set()  # a list restarted after a 410 yields nothing twice
    for _ in range(3):
        token = None
        try:
            while True:
                result = retrying(list_call, namespace, label_selector=label_selector, limit=page, _continue=token)
                for item in result.items:
                    if item.metadata.uid not in seen:
                        seen.add(item.metadata.uid)
                        yield item
                token = getattr(result.metadata, "var_continue", None) or getattr(result.metadata, "_continue", None)
                if not token:
                    return
        except Exception as e:
            if status_of(e) != 410:
                raise
    raise RuntimeError("listing kept failing with 410 Gone (expired continue tokens)")
