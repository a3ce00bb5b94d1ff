"""Software environments on the offline EC2 with no shared build cache, as on real machines: the
first cluster builds its environment once (not once per node) and uploads the pack, and its
client pins it; a later cluster fetches the pinned pack; a pack planted in the store (as a
compromised node could) is never run; ``get_logs()`` says which path each node took. (A failed
build failing the start with uv's message: test_aws_software.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

OPTIONS = {"region": "us-east-1", "allow_ingress_from": "127.0.0.1/32"}


def _s3(simulator):
    return simulator.client("s3", OPTIONS["region"])


def _bucket(simulator) -> str:
    return f"coiled-artifacts-{simulator.credentials.account_id}-{OPTIONS['region']}"


def _env_objects(simulator, prefix: str = "envs/") -> list[str]:
    reply = _s3(simulator).list_objects_v2(Bucket=_bucket(simulator), Prefix=prefix, ExpectedBucketOwner=simulator.credentials.account_id)
    return sorted(o["Key"] for o in reply.get("Contents", []))


def _object(simulator, key: str) -> bytes:
    owner = simulator.credentials.account_id
    return _s3(simulator).get_object(Bucket=_bucket(simulator), Key=key, ExpectedBucketOwner=owner)["Body"].read()


def _put(simulator, key: str, body: bytes) -> None:
    _s3(simulator).put_object(Bucket=_bucket(simulator), Key=key, Body=body, ExpectedBucketOwner=simulator.credentials.account_id)


def _planted_pack(tmp_path) -> tuple[bytes, str]:
    """A pack a compromised node could write: an 'environment' that is not what was asked for."""
    from coiled_core.node import envpack

    env = tmp_path / "planted"
    (env / "bin").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (env / "planted").write_text("run me")
    sha256, _ = envpack.pack(env, tmp_path / "planted.tar.zst")
    return (tmp_path / "planted.tar.zst").read_bytes(), sha256


def _paths(logs: dict[str, str]) -> list[str]:
    """How each node got its environment, from the lines the envpack step logs."""
    found = []
    for text in logs.values():
        for line in text.splitlines():
            if "coiled: environment: " in line and " ready (" in line:
                found.append(line.split(" ready (", 1)[1].rsplit(") in ", 1)[0])
    return sorted(found)


def _node_logs(cluster, nodes: int) -> dict[str, str]:
    """The cluster's logs once every node's agent shipped its log (at start, then every 10 s)."""
    from coiled_core.testing import wait_until

    found: dict[str, str] = {}

    def shipped() -> bool:
        found.clear()
        found.update({key: text for key, text in cluster.get_logs().items() if key.startswith("aws:")})
        return len(_paths(found)) >= nodes

    wait_until(shipped, 60, message=f"the boot logs of {nodes} nodes")
    return found


def test_the_first_cluster_builds_once_and_later_clusters_fetch_only_the_pinned_pack(uncached_ec2, tmp_path):
    import coiled

    kwargs = dict(backend="aws", backend_options=OPTIONS, worker_cpu=1, worker_memory="2 GiB", security=False, wait_for_workers=True)
    with coiled.Cluster(name=f"packs-first-{os.getpid()}", n_workers=2, **kwargs) as cluster:
        first_logs = _node_logs(cluster, 3)
    # Three nodes booted at once; one built, the others waited for its pack.
    assert _paths(first_logs) == [
        "built and uploaded",
        "waited for another node's pack, then fetched it",
        "waited for another node's pack, then fetched it",
    ], first_logs
    assert any("coiled: boot: software environment" in text for text in first_logs.values())
    objects = _env_objects(uncached_ec2)
    packs = [key for key in objects if key.endswith(".tar.zst")]
    assert len(packs) == 1 and any(key.endswith("/manifest.json") for key in objects), objects
    # Its client pinned the pack, once the scheduler answered.
    pins = _env_objects(uncached_ec2, "pins/")
    assert len(pins) == 1, pins
    pin = json.loads(_object(uncached_ec2, pins[0]))
    assert pin["object"] == packs[0] and "/builds/" in pin["object"]

    # A compromised node plants a pack and a manifest where nodes looked for one.
    planted, planted_sha256 = _planted_pack(tmp_path)
    env_prefix = packs[0].split("/builds/", 1)[0]
    _put(uncached_ec2, f"{env_prefix}/{planted_sha256}.tar.zst", planted)
    manifest = {"object": f"{env_prefix}/{planted_sha256}.tar.zst", "sha256": planted_sha256, "prefix": "/x", "size": len(planted)}
    _put(uncached_ec2, f"{env_prefix}/manifest.json", json.dumps(manifest).encode())

    with coiled.Cluster(name=f"packs-second-{os.getpid()}", n_workers=0, **kwargs) as cluster:
        assert _paths(_node_logs(cluster, 1)) == ["fetched the pinned pack"]
    assert [key for key in _env_objects(uncached_ec2) if key.endswith(".tar.zst") and "/builds/" in key] == packs

    # The pinned pack itself replaced (a node of the first cluster may write its build): refused.
    _put(uncached_ec2, packs[0], planted)
    with coiled.Cluster(name=f"packs-planted-{os.getpid()}", n_workers=0, **kwargs) as cluster:
        logs = _node_logs(cluster, 1)
    assert _paths(logs) == ["built and uploaded"], logs
    assert sum("refusing the pinned pack" in text for text in logs.values()) == 1
    # The new build is pinned instead.
    repinned = json.loads(_object(uncached_ec2, pins[0]))
    assert repinned["object"] != packs[0] and repinned["sha256"] != planted_sha256


def test_the_aws_store_program_keeps_the_contract(uncached_ec2, tmp_path):
    """get: exit 2 for a missing object; create: atomic, exit 3 when the key exists; every call
    names the bucket's owner."""
    from coiled_aws import artifacts, bootstrap
    from coiled_aws.options import AWSOptions
    from coiled_aws.session import AWS

    aws = AWS(AWSOptions(**OPTIONS))
    bucket = artifacts.ensure_bucket(aws)
    store = bootstrap.node_store(bucket, aws.account_id, aws.region)
    program = tmp_path / "store.py"
    program.write_text(store.program)
    env = dict(os.environ, COILED_STORE=json.dumps(store.settings))

    def run(*args: str) -> int:
        return subprocess.run([sys.executable, str(program), *args], env=env, capture_output=True).returncode

    source = tmp_path / "claim"
    source.write_text("mine")
    assert run("get", "envs/test/none", str(tmp_path / "x")) == 2
    assert run("create", str(source), "envs/test/claim") == 0
    assert run("create", str(source), "envs/test/claim") == 3
    assert run("put", str(source), "envs/test/claim") == 0
    assert run("get", "envs/test/claim", str(tmp_path / "got")) == 0 and (tmp_path / "got").read_text() == "mine"
    assert uncached_ec2.s3_requests_without_expected_owner == []
    # A bucket of the same name in another account is never used.
    other = dict(env, COILED_STORE=json.dumps({**store.settings, "owner": "999999999999"}))
    refused = subprocess.run([sys.executable, str(program), "get", "envs/test/claim", str(tmp_path / "no")], env=other, capture_output=True, text=True)
    assert refused.returncode == 1 and ("AccessDenied" in refused.stderr or "403" in refused.stderr), refused.stderr


def test_coiled_env_build_prebuilds_the_pack_so_no_node_builds(uncached_ec2, tmp_path):
    """``coiled env build NAME --backend aws`` builds on the client and uploads the pack where
    the nodes look for it, before any cluster needs it."""
    from click.testing import CliRunner

    import coiled
    from coiled_core.cli import cli

    name = f"prebuilt-{os.getpid()}"
    coiled.create_software_environment(name, pip=["toolz"], post_build=["echo prebuilt on the client"])
    try:
        options = [arg for key, value in OPTIONS.items() for arg in ("-o", f"{key}={value}")]
        result = CliRunner().invoke(cli, ["env", "build", name, "--backend", "aws", *options])
        assert result.exit_code == 0, result.output
        assert f"/{name}' (" in result.output and "built software environment" in result.output and "uploaded it" in result.output
        again = coiled.build_software_environment(name, backend="aws", backend_options=OPTIONS)
        assert "is already built" in again and f"/{name}'" in again
        # The pack nodes fetch (they fetch a pinned pack in the test above), built and pinned by the client.
        built_by = [json.loads(_object(uncached_ec2, key))["built_by"] for key in _env_objects(uncached_ec2, "pins/")]
        assert sum(by.startswith("client ") for by in built_by) == 1, built_by
    finally:
        coiled.delete_software_environment(name)


def test_a_backend_without_prebuilt_environments_says_so(tmp_path):
    import coiled
    from coiled import ClusterSpecError

    coiled.create_software_environment(f"not-prebuilt-{os.getpid()}", pip=["toolz"])
    try:
        with pytest.raises(ClusterSpecError, match="does not build software environments ahead of time"):
            coiled.build_software_environment(f"not-prebuilt-{os.getpid()}", backend="subprocess")
    finally:
        coiled.delete_software_environment(f"not-prebuilt-{os.getpid()}")
