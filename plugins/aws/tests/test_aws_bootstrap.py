"""The boot script as bash runs it: values stay data, and only the verified agent bundle runs.

The container path is run for real with stand-ins for the two commands a laptop lacks (``aws``,
which fetches the bundle, and ``docker``), each recording its arguments. The venv path, which
needs the offline EC2, is in test_aws_trust_chain.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from coiled_aws.artifacts import StoredObject
from coiled_aws.bootstrap import render

BUNDLE = b"the agent bundle, as the client uploaded it"


def _bundle(sha256: str = hashlib.sha256(BUNDLE).hexdigest()) -> StoredObject:
    return StoredObject(
        bucket="coiled-artifacts-111122223333-us-east-1",
        key="agent/coiled_core-0123456789abcdef.zip",
        sha256=sha256,
        owner="111122223333",
        region="us-east-1",
    )


def _stand_ins(directory: Path) -> Path:
    """``aws`` (writes BUNDLE to its last argument) and ``docker``, each recording its argv."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    (directory / "bundle").write_bytes(BUNDLE)
    scripts = {
        "aws": f'printf "%s\\n" "$@" > {directory}/aws.args\nfor last; do :; done\ncp {directory}/bundle "$last"\n',
        "docker": f'printf "%s\\n" "$@" > {directory}/docker.args\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return bin_dir


def _run(script: str, directory: Path) -> Path:
    """Run ``script`` with bash as a node would (offline: no power-off); return its root."""
    root = directory / "root"
    env = {
        "PATH": f"{_stand_ins(directory)}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(directory),
        "COILED_OFFLINE": "1",
        "COILED_NODE_ROOT": str(root),
        "COILED_INSTANCE_ID": "i-0123456789abcdef0",
    }
    subprocess.run(["bash", "-c", script], env=env, cwd=directory, timeout=60, check=False)
    return root


def test_a_container_value_is_never_run_by_the_shell(tmp_path):
    marker = tmp_path / "pwned"
    container = f"$(touch {marker})`touch {marker}`"
    script = render("c", {"cluster_name": "c"}, ["distributed"], "3.11", "abc", _bundle(), container=container)
    root = _run(script, tmp_path)
    assert not marker.exists()
    # docker got the value as one argument, verbatim, and the verified bundle was mounted.
    docker_args = (tmp_path / "docker.args").read_text().splitlines()
    assert container in docker_args
    assert (root / "agent.zip").read_bytes() == BUNDLE
    # The bundle was fetched from the expected owner's bucket, with the node's own credentials.
    aws_args = (tmp_path / "aws.args").read_text().splitlines()
    assert aws_args[aws_args.index("--expected-bucket-owner") + 1] == "111122223333"
    assert aws_args[aws_args.index("--bucket") + 1] == "coiled-artifacts-111122223333-us-east-1"


def test_a_container_node_refuses_a_bundle_with_another_sha256(tmp_path):
    script = render("c", {"cluster_name": "c"}, ["distributed"], "3.11", "abc", _bundle("0" * 64), container="daskdev/dask")
    root = _run(script, tmp_path)
    assert not (tmp_path / "docker.args").exists()  # nothing ran
    assert not (root / "agent.zip").exists()
    log = (root / "node.log").read_text()
    assert "refusing to run the agent bundle" in log and "0" * 64 in log


def test_placeholder_text_in_user_content_comes_out_verbatim(tmp_path):
    tricky = "__BUNDLE_URL__ __BUNDLE_SHA256__ __CONTAINER__ __NODE_JSON__ __CLUSTER__ $(touch x) `y` 'q' \"d\" \\n"
    config = {"cluster_name": "c", "environ": {"TRICKY": tricky}, "lifecycle": {"note": "COILED_NODE_JSON"}}
    requirements = ["distributed", "pkg==1.0; python_version > '3' and os_name != '__ENV_HASH__'"]
    script = render("c", config, requirements, "3.11", "abc", _bundle(), container="daskdev/dask:latest")
    assert json.dumps(config, separators=(",", ":")) in script
    assert "pkg==1.0; python_version > '\"'\"'3'\"'\"' and os_name != '\"'\"'__ENV_HASH__'\"'\"'" in script
    root = _run(script, tmp_path)
    assert json.loads((root / "node.json").read_text()) == config
    assert not (tmp_path / "x").exists()


def test_the_user_data_holds_no_url_or_key_of_the_client(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACLIENTKEY0000000")
    script = render("c", {"cluster_name": "c"}, ["distributed"], "3.11", "abc", _bundle())
    assert "AKIACLIENTKEY" not in script and "X-Amz-" not in script and "http" not in script.replace("http://169.254", "")
    assert _bundle().sha256 in script


def test_a_stored_container_is_checked_when_loaded(tmp_path):
    """A shared store is written by others: a stored container that is not an image reference
    is refused when the environment is loaded, not only when it is created."""
    import dask.config

    from coiled_core.software import SoftwareEnvironmentError, create_software_environment, get_software_info
    from coiled_core.store import Store

    with dask.config.set({"coiled.store": str(tmp_path / "store")}):
        good = create_software_environment("team/image", container="ghcr.io/dask/dask:2024.1.0")
        assert get_software_info("team/image") == good
        stored = json.loads(Store().read("software/team/image.json"))
        for bad in ("daskdev/dask:$(touch /tmp/x)", "daskdev/dask\n", " daskdev/dask"):
            Store().write("software/team/image.json", json.dumps({**stored, "container": bad}).encode())
            with pytest.raises(SoftwareEnvironmentError, match="container") as refused:
                get_software_info("team/image")
            assert "team/image" in str(refused.value)
