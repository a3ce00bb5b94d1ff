"""The k8s node add-on: runs inside the node agent in every scheduler and worker pod.

The Dask image has no ``kubernetes`` package, so this module uses the standard library only
(it travels in the agent bundle, in the cluster's ConfigMap). It

- reads the pod's secrets (its role's TLS material and the spec's ``environ``) from the Secret
  mounted at ``$COILED_K8S_SECRETS``;
- names the pod's one worker after the pod (``$COILED_K8S_POD_NAME``, from the downward API), so
  that scale-down deletes exactly the retired workers' pods;
- on the scheduler, when a cluster that ran ends (idle, no client, lifetime cap, SIGTERM), deletes
  the cluster's owner ConfigMap with the pod's service-account token, only if its uid is still this
  cluster's (a precondition): Kubernetes' garbage collector then deletes every object of the
  cluster, without any client.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from coiled_core.backend import NodeAddOn, NodeSecrets

logger = logging.getLogger("coiled_core.node")
DEFAULT_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubernetesNode(NodeAddOn):
    """Settings: ``role``, and on the scheduler ``namespace``, ``owner`` and ``owner_uid``."""

    def load_secrets(self) -> NodeSecrets | None:
        directory = os.environ.get("COILED_K8S_SECRETS")
        if not directory:
            return None
        secrets = NodeSecrets()
        for name, attribute in (("tls.json", "tls"), ("environ.json", "environ")):
            path = os.path.join(directory, name)
            if os.path.exists(path):
                with open(path) as f:
                    setattr(secrets, attribute, json.load(f) or {})
        return secrets

    def worker_names(self, prefix: str, count: int, first_index: int) -> list[str] | None:
        pod = os.environ.get("COILED_K8S_POD_NAME")
        return [pod] if pod and count == 1 and first_index == 0 else None

    #: Whether the node got to run (the agent hands over its background tasks only then).
    ran = False

    def background_tasks(self, agent: Any) -> list:
        self.ran = True
        return []

    def on_end(self, stop_reason: str | None) -> None:
        if self.settings.get("role") != "scheduler":
            return
        if not self.ran:
            # A failed start: the pod ends Failed and keeps its log, so the client that is waiting
            # for the scheduler can show why; that client (or `coiled cluster gc`) deletes the rest.
            logger.info("the scheduler never ran: its cluster stays for its creator to read and delete")
            return
        delete_owner(self.settings, stop_reason)


def delete_owner(settings: dict[str, Any], stop_reason: str | None, attempts: int = 4) -> None:
    """Delete the cluster's owner ConfigMap (Background propagation, uid precondition)."""
    account = os.environ.get("COILED_K8S_SERVICE_ACCOUNT_DIR", DEFAULT_SERVICE_ACCOUNT_DIR)
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host or not os.path.exists(os.path.join(account, "token")):
        logger.warning("no in-cluster API access: the cluster's objects stay until `coiled cluster gc`")
        return
    with open(os.path.join(account, "token")) as f:
        token = f.read().strip()
    host = f"[{host}]" if ":" in host else host
    url = f"https://{host}:{port}/api/v1/namespaces/{settings['namespace']}/configmaps/{settings['owner']}"
    body = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
                       "preconditions": {"uid": settings["owner_uid"]}}).encode()
    context = ssl.create_default_context(cafile=os.path.join(account, "ca.crt"))
    for attempt in range(attempts):
        request = urllib.request.Request(url, data=body, method="DELETE", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=10):
                logger.info("cluster ended (%s): deleted its owner %s", stop_reason, settings["owner"])
                return
        except urllib.error.HTTPError as e:
            if e.code in (404, 409):  # gone already, or a newer cluster of the same name holds it
                return
            if e.code in (401, 403):
                logger.warning("not allowed to delete the cluster's owner (%s): %s", e.code, e.read()[:300])
                return
            error: Exception = e
        except OSError as e:
            error = e
        time.sleep(0.5 * 2**attempt)
    logger.warning("could not delete the cluster's owner %s: %s", settings["owner"], error)
