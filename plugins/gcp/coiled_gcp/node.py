"""The ``gcp`` backend's node add-on (``coiled_gcp.node:GCPNode``), run inside the node agent.

On a Compute Engine node it:

- reads the node's secret (its role's TLS material and the cluster's ``environ``) from Secret
  Manager with the node's own service account: never from instance metadata, which any
  principal with ``compute.instances.get`` reads;
- names the node's worker after its instance, so scale-down knows which instance to delete;
- copies the tail of the node's log to the artifact bucket, so logs outlive the machine;
- on the scheduler, deletes the cluster's secrets when the cluster ends on its own.

Settings: ``project``, ``secret`` (the role's secret id), ``delete_on_end`` (secret ids),
``log_bucket``, ``log_key`` (``{instance_id}`` filled in), ``log_interval``.

Standard library only (urllib), authenticated with the metadata server's token of the node's
service account (offline: ``COILED_GCP_ENDPOINT``, and ``COILED_GCP_TOKEN``, that account's token
as the stand-in hands it to the machine).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from coiled_core.backend import NodeAddOn, NodeSecrets

logger = logging.getLogger("coiled_core.node")
#: How long a node waits for IAM to let its new service account in (403s asked again).
PROPAGATION_SECONDS = 180
METADATA_TOKEN = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"


def instance_name() -> str:
    """This machine's instance name (the boot script exports it from the metadata server)."""
    return os.environ.get("COILED_INSTANCE_ID") or "node"


def _token() -> str:
    if os.environ.get("COILED_GCP_TOKEN"):
        return os.environ["COILED_GCP_TOKEN"]
    request = urllib.request.Request(METADATA_TOKEN, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)["access_token"]


def _call(method: str, url: str, data: bytes | None = None, content_type: str = "application/json") -> bytes:
    request = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"Bearer {_token()}"})
    if data is not None:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=60) as reply:
        return reply.read()


def _base(service: str) -> str:
    return os.environ.get("COILED_GCP_ENDPOINT") or f"https://{service}.googleapis.com"


class GCPNode(NodeAddOn):
    """The node add-on of the ``gcp`` backend (see the module documentation)."""

    def __init__(self, settings: dict[str, Any], config: Any):
        super().__init__(settings, config)
        self.log_interval = float(settings.get("log_interval", 10)) if settings.get("log_bucket") else None
        self._lock = threading.Lock()
        self._shipped: tuple[int, int, int] | None = None

    def load_secrets(self) -> NodeSecrets | None:
        secret = self.settings.get("secret")
        if not secret:
            return None
        url = f"{_base('secretmanager')}/v1/projects/{self.settings['project']}/secrets/{secret}/versions/latest:access"
        # The cluster's service account and its grant are new: IAM may take a minute or two to
        # let it in everywhere, so a refusal is asked again for a while.
        deadline = time.monotonic() + PROPAGATION_SECONDS
        while True:
            try:
                reply = _call("GET", url)
                break
            except urllib.error.HTTPError as e:
                if e.code != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(5)
        payload = json.loads(reply)["payload"]["data"]
        value = json.loads(base64.b64decode(payload))
        return NodeSecrets(tls=value.get("tls") or {}, environ=value.get("environ") or {})

    def worker_names(self, prefix: str, count: int, first_index: int) -> list[str] | None:
        if count == 1 and first_index == 0 and os.environ.get("COILED_INSTANCE_ID"):
            return [f"{prefix}{instance_name()}"]
        return None

    def ship_log(self, path: str, final: bool = False) -> None:
        bucket = self.settings.get("log_bucket")
        if not bucket:
            return
        with self._lock:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if version == self._shipped:
                    return
                f.seek(max(0, stat.st_size - 2_000_000))
                body = f.read()
            key = self.settings["log_key"].format(instance_id=instance_name())
            query = urllib.parse.urlencode({"uploadType": "media", "name": key})
            _call("POST", f"{_base('storage')}/upload/storage/v1/b/{bucket}/o?{query}", body, "text/plain")
            self._shipped = version

    def on_end(self, stop_reason: str | None) -> None:
        # Not on a signal: whoever deletes the node (teardown, gc) deletes the secrets, and may
        # already have made a new cluster of the same name whose secrets these names now are.
        names = list(self.settings.get("delete_on_end") or [])
        if not names or stop_reason in ("SIGTERM", "SIGINT"):
            return
        for secret in names:
            try:
                _call("DELETE", f"{_base('secretmanager')}/v1/projects/{self.settings['project']}/secrets/{secret}")
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    logger.warning("could not delete secret %s: HTTP %s", secret, e.code)
            except Exception:
                logger.warning("could not delete secret %s", secret, exc_info=True)
