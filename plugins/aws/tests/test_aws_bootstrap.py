"""The AWS parts of the boot script: what its user data holds and where its objects come from.

The script itself (shared by every VM backend) is run for real in tests/test_node_bootstrap.py;
on the offline EC2 in test_env_packs.py and test_aws_trust_chain.py.
"""

from __future__ import annotations

import json

import pytest
from coiled_aws.artifacts import StoredObject
from coiled_aws.bootstrap import render

from coiled_core.backend import BootSoftware


def _bundle() -> StoredObject:
    return StoredObject(
        bucket="coiled-artifacts-111122223333-us-east-1",
        key="agent/coiled_core-0123456789abcdef.zip",
        sha256="ab" * 32,
        owner="111122223333",
        region="us-east-1",
    )


SOFTWARE = BootSoftware(name="s", env_hash="abc", python="3.11", requirements=("distributed",))


def test_the_user_data_holds_no_url_or_key_of_the_client(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACLIENTKEY0000000")
    script = render("c", {"cluster_name": "c"}, SOFTWARE, _bundle())
    assert "AKIACLIENTKEY" not in script and "X-Amz-" not in script and "http" not in script.replace("http://169.254", "")
    assert _bundle().sha256 in script
    # The bucket is named with its owner, for the node's store program (ExpectedBucketOwner).
    assert '"owner":"111122223333"' in script and "ExpectedBucketOwner=owner" in script


def test_objects_must_be_in_the_bundles_bucket():
    foreign = StoredObject("someone-elses", "agent/code-2.zip", "2" * 64, "111122223333", "us-east-1")
    with pytest.raises(ValueError, match="bucket"):
        render("c", {}, SOFTWARE, _bundle(), local_code=foreign)


def test_a_stored_container_is_checked_when_loaded(tmp_path):
    """A shared store is written by others: a stored container that is not an image reference
    is refused when the environment is loaded, not only when it is created."""
    import dask.config

    from coiled_core.software import (
        SoftwareEnvironmentError,
        create_software_environment,
        get_software_info,
    )
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


def test_the_metadata_token_is_never_in_a_process_s_arguments(tmp_path):
    """Any local user reads every process's arguments (/proc/*/cmdline): the IMDSv2 token goes
    to curl on its standard input, and the node still learns its instance id."""
    import os
    import subprocess

    from coiled_aws.bootstrap import IMDS_INSTANCE_ID

    calls = tmp_path / "calls"
    curl = tmp_path / "curl"
    curl.write_text(
        "#!/bin/bash\n"
        f'printf "%s\\n" "$*" >> {calls}\n'
        'for arg in "$@"; do [ "$arg" = "@-" ] && { printf "stdin: %s\\n" "$(cat)" >> ' + str(calls) + "; }; done\n"
        'case "$*" in *api/token*) echo SECRET-IMDS-TOKEN ;; *instance-id*) echo i-0123456789abcdef0 ;; esac\n'
    )
    curl.chmod(0o755)
    ran = subprocess.run(["bash", "-c", IMDS_INSTANCE_ID], capture_output=True, text=True, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert ran.stdout.strip() == "i-0123456789abcdef0", ran
    lines = calls.read_text().splitlines()
    arguments = [line for line in lines if not line.startswith("stdin: ")]
    assert len(arguments) == 2 and not any("SECRET-IMDS-TOKEN" in line for line in arguments), lines
    assert "stdin: X-aws-ec2-metadata-token: SECRET-IMDS-TOKEN" in lines
