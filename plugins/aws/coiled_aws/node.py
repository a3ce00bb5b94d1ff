"""The ``aws`` backend's node add-on: what an EC2 node does that the core's agent does not.

Named in every AWS node config (``coiled_aws.node:AWSNode``) and shipped to the node inside the
agent bundle. On the node it:

- reads the node's secrets (its role's TLS material and the cluster's ``environ``) from SSM
  Parameter Store with the node's own instance role, not from user data, which other principals
  can read through DescribeInstanceAttribute;
- names the node's worker after its EC2 instance, so that scale-down knows which machine to stop;
- copies the tail of the node's log to the artifact bucket, so logs outlive the machine;
- on the scheduler node, deletes the cluster's secret parameters when the cluster ends on its own.

Settings (``addon.settings``): ``region``, ``endpoint_url`` (tests), ``secrets_prefix`` (the
role's SSM path), ``delete_on_end`` (parameter names; scheduler node only), ``log_bucket``,
``log_key`` (``{instance_id}`` is filled in), ``log_interval`` and ``expected_bucket_owner``.

Imports boto3 only inside its methods, and nothing of pydantic: it runs in the node agent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from coiled_core.backend import NodeAddOn, NodeSecrets

logger = logging.getLogger("coiled_core.node")


def instance_id() -> str:
    """This machine's EC2 instance id (the boot script exports it from the metadata service)."""
    return os.environ.get("COILED_INSTANCE_ID") or "node"


class AWSNode(NodeAddOn):
    """The node add-on of the ``aws`` backend (see the module documentation)."""

    def __init__(self, settings: dict[str, Any], config: Any):
        super().__init__(settings, config)
        self.log_interval = float(settings.get("log_interval", 10)) if settings.get("log_bucket") else None
        self.uploader = LogUploader(settings) if settings.get("log_bucket") else None

    def load_secrets(self) -> NodeSecrets | None:
        if not self.settings.get("secrets_prefix"):
            return None
        secrets = _secrets_from_ssm(self.settings)
        environ = json.loads(secrets.pop("environ", None) or "{}")
        return NodeSecrets(tls=secrets, environ=environ)

    def worker_names(self, prefix: str, count: int, first_index: int) -> list[str] | None:
        # One worker per machine: its name says which machine to stop on scale-down.
        if count == 1 and first_index == 0 and os.environ.get("COILED_INSTANCE_ID"):
            return [f"{prefix}{instance_id()}"]
        return None

    def ship_log(self, path: str, final: bool = False) -> None:
        if self.uploader is not None:
            self.uploader.upload(path)

    def on_end(self, stop_reason: str | None) -> None:
        delete_ssm_secrets(self.settings, stop_reason)


def _secrets_from_ssm(settings: dict[str, Any]) -> dict[str, str]:
    """The node's secrets kept in SSM Parameter Store (SecureStrings under ``settings["secrets_prefix"]``,
    its own role's path), read with the node's own role: its TLS material and, under
    ``environ``, the cluster's environment variables as JSON.

    Cloud nodes get them this way rather than in user data, which other principals can read
    through DescribeInstanceAttribute.
    """
    client = _ssm_client(settings)
    prefix = settings["secrets_prefix"].rstrip("/")
    found: dict[str, str] = {}
    token = None
    while True:
        page = client.get_parameters_by_path(
            Path=prefix, WithDecryption=True, **({"NextToken": token} if token else {})
        )
        for parameter in page["Parameters"]:
            found[parameter["Name"][len(prefix) + 1 :]] = parameter["Value"]
        token = page.get("NextToken")
        if not token or not page["Parameters"]:
            return found


def _ssm_client(settings: dict[str, Any]) -> Any:
    import boto3

    return boto3.client("ssm", region_name=settings.get("region"), endpoint_url=settings.get("endpoint_url"))


def delete_ssm_secrets(settings: dict[str, Any], stop_reason: str | None) -> None:
    """When the cluster ends on its own, delete its secrets in SSM (``settings["delete_on_end"]``,
    the scheduler node's list of every role's parameters), so that they do not outlive it.

    Not on a signal: whoever terminates the node (teardown, gc) deletes them itself, and may
    already have made a new cluster of the same name whose parameters these names now are.
    Best effort: a failure is logged, never stops the node's end; gc removes what is left.
    """
    names = list(settings.get("delete_on_end") or [])
    if not names or stop_reason in ("SIGTERM", "SIGINT"):
        return
    try:
        client = _ssm_client(settings)
        for start in range(0, len(names), 10):  # DeleteParameters takes at most 10 names
            client.delete_parameters(Names=names[start : start + 10])
        logger.info("deleted the cluster's %d secret parameters", len(names))
    except Exception:
        logger.warning("could not delete the cluster's secret parameters", exc_info=True)


class LogUploader:
    """Copies the tail of this node's log file to object storage, so logs outlive the machine.

    ``settings`` are the add-on's: ``log_bucket``, ``log_key`` (``{instance_id}`` is filled in),
    ``region``, ``endpoint_url`` and ``expected_bucket_owner``, the account that must own the
    bucket: S3 refuses the upload if another account does, so a log never lands in a bucket
    someone took over. The agent calls :meth:`upload` with the log's path (at start, every
    ``log_interval`` seconds, and last of all).

    An upload happens only when the file changed since the last one (its identity, size or
    modification time), and sends at most the last :attr:`MAX_BYTES`, read by seeking to them.
    The agent rotates its log by copying and truncating it in place, so a file that shrank is a
    change like any other.
    """

    #: The most of the log's end that one upload sends.
    MAX_BYTES = 2_000_000

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        # One upload at a time, each reading the file afresh: a slow earlier upload must never
        # land after, and overwrite, the final one.
        self.lock = threading.Lock()
        self._uploaded: tuple[int, int, int] | None = None  # (inode, size, mtime) last sent
        self._client: Any = None
        self._failed = False

    def upload(self, path: str) -> None:
        """Send the tail of the log file ``path`` if it changed (best effort: failures are logged)."""
        with self.lock:
            try:
                self._upload(path)
                self._failed = False
            except Exception:
                # Once with its traceback: the warning itself grows the log, and a failing
                # upload would otherwise add one every interval.
                logger.log(logging.DEBUG if self._failed else logging.WARNING, "uploading the log failed", exc_info=True)
                self._failed = True

    def _upload(self, path: str) -> None:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if version == self._uploaded:
                return
            f.seek(max(0, stat.st_size - self.MAX_BYTES))
            body = f.read(self.MAX_BYTES)
        key = self.settings["log_key"].format(instance_id=instance_id())
        owner = self.settings.get("expected_bucket_owner")
        extra = {"ExpectedBucketOwner": owner} if owner else {}
        self._s3().put_object(Bucket=self.settings["log_bucket"], Key=key, Body=body, **extra)
        # What was read; a write since then changes size or mtime and is sent next time.
        self._uploaded = version

    def _s3(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", region_name=self.settings.get("region"), endpoint_url=self.settings.get("endpoint_url"))
        return self._client
