"""Software environments on AWS: post_build, include_local_code, a failing build, and what is
still refused (conda).

The venv path runs for real on the offline EC2 (one small cluster, and ones that fail). The boot
script's container path (docker, which the offline EC2 does not run) is tested in the core, with
the script every VM backend shares (tests/test_node_bootstrap.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest
from coiled_aws import local_code

from coiled_core.backend import POST_BUILD_INLINE_BYTES

OPTIONS = {"region": "us-east-1", "allow_ingress_from": "127.0.0.1/32"}
BUCKET = "coiled-artifacts-111122223333-us-east-1"
OWNER = "111122223333"


# -- the local code archive ------------------------------------------------------------------------
def test_local_code_ships_python_files_and_skips_the_rest(tmp_path, monkeypatch):
    files = {
        "top.py": "A = 1\n",
        "pkg/__init__.py": "",
        "pkg/mod.py": "B = 2\n",
        "pkg/data.csv": "not python\n",
        "pkg/__pycache__/mod.cpython-311.py": "cached\n",
        ".hidden/secret.py": "no\n",
        ".dotfile.py": "no\n",
        "venv/pyvenv.cfg": "home = /usr\n",
        "venv/lib/site.py": "no\n",
        "condaenv/conda-meta/history": "",
        "condaenv/lib/x.py": "no\n",
        "node_modules/x.py": "no\n",
        "big.py": "#" * (local_code.MAX_FILE_BYTES + 1),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "linked").symlink_to(tmp_path / "pkg")  # a linked directory is not followed
    assert [name for name, _ in local_code.collect(tmp_path)] == ["pkg/__init__.py", "pkg/mod.py", "top.py"]
    data = local_code.archive(tmp_path)
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["pkg/__init__.py", "pkg/mod.py", "top.py"]
    # Deterministic: the same files give the same bytes (and so the same key), whenever written.
    os.utime(tmp_path / "top.py", (1, 1))
    assert local_code.archive(tmp_path) == data
    monkeypatch.setattr(local_code, "MAX_TOTAL_BYTES", 4)
    with pytest.raises(local_code.LocalCodeError, match="project's directory"):
        local_code.collect(tmp_path)


# -- preflight -----------------------------------------------------------------------------------
def test_conda_is_still_refused_and_the_rest_is_accepted(offline_ec2, tmp_path, monkeypatch):
    import coiled
    from coiled import ClusterSpecError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("X = 1\n")
    coiled.create_software_environment("aws-conda", conda={"channels": ["conda-forge"], "dependencies": ["numpy"]})
    coiled.create_software_environment("aws-image-conda", container="daskdev/dask:latest", conda={"dependencies": ["numpy"]})
    coiled.create_software_environment("aws-image-pip", container="daskdev/dask:latest", pip=["tabulate"], post_build=["true"])
    coiled.create_software_environment("aws-local", pip=["tabulate"], include_local_code=True, post_build=["true"])
    try:
        for name in ("aws-conda", "aws-image-conda"):
            with pytest.raises(ClusterSpecError) as refused:
                coiled.check_cluster(software=name, backend="aws", backend_options=OPTIONS)
            message = str(refused.value)
            assert "software" in message and "conda environments are not built on AWS yet" in message, message
        for name in ("aws-image-pip", "aws-local"):
            coiled.check_cluster(software=name, backend="aws", backend_options=OPTIONS)
        monkeypatch.setattr(local_code, "MAX_TOTAL_BYTES", 2)
        with pytest.raises(ClusterSpecError, match="include_local_code=True, but the Python files"):
            coiled.check_cluster(software="aws-local", backend="aws", backend_options=OPTIONS)
    finally:
        for name in ("aws-conda", "aws-image-conda", "aws-image-pip", "aws-local"):
            coiled.delete_software_environment(name)


# -- the venv path, on the offline EC2 -----------------------------------------------------------------
def _default_pins() -> list[str]:
    """The client's own versions (as the default environment has them): a cluster that runs the
    client's protocol, built from pip's cache."""
    from coiled_core.software import default_software_spec

    return default_software_spec().pip


def test_post_build_and_local_code_reach_every_node(offline_ec2, tmp_path, monkeypatch):
    """One cluster: post_build (too long to go inline: fetched from the bucket) ran in the venv
    (with VIRTUAL_ENV and CONDA_PREFIX), a module of the client's working directory is
    importable in tasks and on the scheduler (and on a worker added later from another
    directory), and the nodes fetched the code by its sha256. The built environment is cached between runs (its spec,
    post_build included, does not change)."""
    from distributed import Client

    import coiled
    from coiled_core.plugins import load_backend

    monkeypatch.chdir(tmp_path)
    (tmp_path / "aws_local_module.py").write_text("ANSWER = 'from the client'\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "not_shipped.py").write_text("")
    coiled.create_software_environment(
        "aws-post-build-local",
        pip=_default_pins(),
        post_build=[
            'python -c "import dask"',
            'echo "$VIRTUAL_ENV $CONDA_PREFIX $(command -v python)" > "$VIRTUAL_ENV/post-build-ran"',
            # Too long for the user data: the nodes fetch it from the bucket and check its sha256.
            "# " + "padding " * (POST_BUILD_INLINE_BYTES // 8),
        ],
        include_local_code=True,
    )
    try:
        with coiled.Cluster(
            name=f"software-{os.getpid()}", software="aws-post-build-local", backend="aws", backend_options=OPTIONS,
            n_workers=1, worker_cpu=1, worker_memory="2 GiB", security=False, wait_for_workers=True,
        ) as cluster:

            def seen():
                import importlib.util
                import sys

                import aws_local_module

                marker = Path(f"{sys.prefix}/post-build-ran").read_text().split()
                return aws_local_module.ANSWER, marker, sys.prefix, importlib.util.find_spec("not_shipped") is None

            with Client(cluster) as client:
                answer, marker, prefix, hidden_left_out = client.submit(seen).result()
                assert answer == "from the client" and hidden_left_out
                assert marker == [prefix, prefix, f"{prefix}/bin/python"]
                assert client.run_on_scheduler(seen)[0] == "from the client"
                # A worker added later gets the same code, whatever the scaling client's directory.
                monkeypatch.chdir(tmp_path / ".hidden")
                cluster.scale(2)
                client.wait_for_workers(2, timeout=120)
                assert [found[0] for found in client.run(seen).values()] == ["from the client"] * 2
            backend = load_backend("aws")
            record = backend.describe(cluster.name, backend.validate_options(OPTIONS))
            expected = hashlib.sha256(local_code.archive(tmp_path)).hexdigest()
            assert record.backend_ids["local_code_sha256"] == expected
            ec2 = offline_ec2.client("ec2", OPTIONS["region"])
            data = ec2.describe_instance_attribute(InstanceId=record.backend_ids["scheduler_instance_id"], Attribute="userData")
            user_data = base64.b64decode(data["UserData"]["Value"]).decode()
            assert "POST_BUILD_KEY=agent/post-build-" in user_data and "padding" not in user_data
            assert f"CODE_KEY=agent/code-{expected}.zip" in user_data
    finally:
        coiled.delete_software_environment("aws-post-build-local")
    assert offline_ec2.s3_requests_without_expected_owner == []


def test_a_failing_post_build_fails_the_start_with_its_output(offline_ec2):
    import coiled
    from coiled import ProvisionError

    coiled.create_software_environment("aws-bad-post-build", pip=["toolz"], post_build=["echo about to fail", "exit 7"])
    try:
        with pytest.raises(ProvisionError) as failed:
            coiled.Cluster(
                name=f"bad-post-build-{os.getpid()}", software="aws-bad-post-build", backend="aws", backend_options=OPTIONS,
                n_workers=0, security=False,
            )
    finally:
        coiled.delete_software_environment("aws-bad-post-build")
    message = str(failed.value)
    assert "failed to start" in message and "about to fail" in message, message
    assert "post_build of software environment" in message and "failed (exit code 7)" in message, message


def test_a_failing_pip_build_fails_the_start_with_the_build_tools_message(offline_ec2):
    """The node ships its log through the store program (the boot tools have boto3), so the
    client's error holds uv's own message."""
    import coiled
    from coiled import ProvisionError

    coiled.create_software_environment("aws-bad-pip", pip=["coiled-no-such-package-xyz"])
    try:
        with pytest.raises(ProvisionError) as failed:
            coiled.Cluster(
                name=f"bad-pip-{os.getpid()}", software="aws-bad-pip", backend="aws", backend_options=OPTIONS,
                n_workers=0, security=False,
            )
    finally:
        coiled.delete_software_environment("aws-bad-pip")
    message = str(failed.value)
    assert "coiled-no-such-package-xyz" in message and "was not found in the package registry" in message, message
    assert "preparing software environment " in message and "/aws-bad-pip failed; powering off" in message, message
