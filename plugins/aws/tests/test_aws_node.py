"""The AWS node add-on (``coiled_aws.node.AWSNode``) on its own, without a simulator: it runs in
the node agent, so it must import light, and its choices (worker names, when secrets are deleted)
are what scale-down and a cluster's end rely on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coiled_aws import node
from coiled_aws.node import AWSNode


def test_the_add_on_imports_no_sdk_and_nothing_of_the_client_side():
    code = (
        "import sys; import coiled_aws.node; "
        "print(sorted(m for m in ('pydantic', 'boto3', 'botocore', 'distributed', 'coiled_aws.plugin') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_a_worker_is_named_after_its_instance(monkeypatch):
    addon = AWSNode({}, None)
    monkeypatch.setenv("COILED_INSTANCE_ID", "i-0123456789abcdef0")
    assert addon.worker_names("c-worker-", 1, 0) == ["c-worker-i-0123456789abcdef0"]
    # A second worker on the same machine (scaled through its scheduler) gets the default name.
    assert addon.worker_names("c-worker-", 1, 1) is None
    monkeypatch.delenv("COILED_INSTANCE_ID")
    assert addon.worker_names("c-worker-", 1, 0) is None


def test_logs_ship_only_with_a_bucket():
    assert AWSNode({}, None).log_interval is None
    shipping = AWSNode({"log_bucket": "b", "log_key": "logs/c/{instance_id}.log", "log_interval": 3}, None)
    assert shipping.log_interval == 3.0 and shipping.uploader is not None


def test_no_secrets_prefix_means_no_secrets_to_load():
    assert AWSNode({}, None).load_secrets() is None


@pytest.mark.parametrize("reason, deleted", [("SIGTERM", False), ("SIGINT", False), ("idle-timeout", True), (None, True)])
def test_secrets_are_deleted_only_when_the_cluster_ends_on_its_own(monkeypatch, reason, deleted):
    """Whoever terminates a node (teardown, gc) deletes the secrets itself, and may already have
    made a new cluster of the same name: a signalled node must not touch them."""
    calls = []

    class SSM:
        def delete_parameters(self, Names):
            calls.append(list(Names))

    monkeypatch.setattr(node, "_ssm_client", lambda settings: SSM())
    names = [f"/coiled/c/secrets/worker/k{i}" for i in range(12)]
    AWSNode({"delete_on_end": names}, None).on_end(reason)
    assert calls == ([names[:10], names[10:]] if deleted else [])
