"""Software environments on AWS: post_build, pip on top of an image, include_local_code, and
what is still refused (conda).

The venv path runs for real on the offline EC2 (one small cluster, and one that fails). The
container path needs docker, which the offline EC2 does not run: its boot script is run here with
stand-ins for ``docker`` (which runs the command as the image would, with a fresh venv's Python as
the image's) and for the ``aws`` CLI (which serves and receives objects from a directory), so the
setup that runs in the image (pip install, post_build, local code, the agent) is run for real.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
from coiled_aws import bootstrap, local_code
from coiled_aws.artifacts import StoredObject

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


# -- the boot script's container path, with stand-ins ----------------------------------------------
def _wheel(directory: Path) -> Path:
    """A tiny pure-Python wheel, ``coiled-tiny-pkg`` 1.0 (importable as ``coiled_tiny_pkg``)."""
    files = {
        "coiled_tiny_pkg/__init__.py": b"VALUE = 'tiny'\n",
        "coiled_tiny_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: coiled-tiny-pkg\nVersion: 1.0\n",
        "coiled_tiny_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("coiled_tiny_pkg-1.0.dist-info/RECORD,,")
    path = directory / "coiled_tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("coiled_tiny_pkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


#: The agent of these tests: it reports what it can see, in the node's root.
_REPORTING_AGENT = textwrap.dedent(
    """
    import json, os, sys
    found = {"pythonpath": os.environ.get("PYTHONPATH", "")}
    try:
        import coiled_tiny_pkg
        found["pip"] = coiled_tiny_pkg.VALUE
    except ImportError as e:
        found["pip"] = repr(e)
    try:
        import my_local_code
        found["local"] = my_local_code.ANSWER
    except ImportError as e:
        found["local"] = repr(e)
    marker = os.path.join(sys.prefix, "post-build-ran")
    found["post_build"] = open(marker).read().split() if os.path.exists(marker) else None
    found["prefix"] = sys.prefix
    with open(os.path.join(os.path.dirname(sys.argv[1]), "report.json"), "w") as f:
        json.dump(found, f)
    """
)


def _reporting_bundle() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("coiled_core/__init__.py", "")
        archive.writestr("coiled_core/node/__init__.py", "")
        archive.writestr("coiled_core/node/__main__.py", _REPORTING_AGENT)
    return buffer.getvalue()


_AWS = """#!{python}
# The AWS CLI, as the boot script calls it: objects come from, and go to, {objects}.
import shutil, sys
args = sys.argv[1:]
with open({calls!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
value = lambda flag: args[args.index(flag) + 1]
assert value("--expected-bucket-owner") == {owner!r} and value("--bucket") == {bucket!r}, args
source = {objects!r} + "/" + value("--key").replace("/", "_")
if args[:2] == ["s3api", "get-object"]:
    try:
        shutil.copy(source, args[-1])
    except FileNotFoundError:
        sys.exit("An error occurred (NoSuchKey) when calling the GetObject operation")
elif args[:2] == ["s3api", "put-object"]:
    shutil.copy(value("--body"), source)
else:
    sys.exit("unexpected aws call: %s" % args)
"""

_DOCKER = """#!{python}
# docker run, as the boot script calls it: the command runs here, the image being {image}.
import os, sys
args = sys.argv[1:]
with open({calls!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
assert args[0] == "run", args
args = args[1:]
env = dict(os.environ)
while args[0].startswith("-"):
    flag = args.pop(0)
    if flag in ("--network", "-v", "-w", "-e"):
        value = args.pop(0)
        if flag == "-w":
            os.chdir(value)
        if flag == "-e" and "=" in value:
            name, _, setting = value.partition("=")
            env[name] = setting
image = args.pop(0)
env["PATH"] = {image!r} + "/bin:" + env["PATH"]
os.execvpe(args[0], args, env)
"""


class _Node:
    """A node's directory with ``aws`` and ``docker`` stand-ins, for the container path."""

    def __init__(self, directory: Path, image: Path):
        self.directory = directory
        self.objects = directory / "objects"
        self.objects.mkdir()
        self.root = directory / "root"
        bin_dir = directory / "bin"
        bin_dir.mkdir()
        values = {"python": sys.executable, "objects": str(self.objects), "owner": OWNER, "bucket": BUCKET, "image": str(image)}
        for name, template in (("aws", _AWS), ("docker", _DOCKER)):
            path = bin_dir / name
            path.write_text(template.format(calls=str(directory / f"{name}.calls"), **values))
            path.chmod(0o755)
        self.path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"

    def put(self, key: str, data: bytes) -> StoredObject:
        (self.objects / key.replace("/", "_")).write_bytes(data)
        return StoredObject(BUCKET, key, hashlib.sha256(data).hexdigest(), OWNER, "us-east-1")

    def object(self, key: str) -> bytes | None:
        path = self.objects / key.replace("/", "_")
        return path.read_bytes() if path.exists() else None

    def calls(self, name: str) -> list[str]:
        path = self.directory / f"{name}.calls"
        return path.read_text().splitlines() if path.exists() else []

    def boot(self, script: str) -> subprocess.CompletedProcess:
        """Run the user data with bash, as a simulated node (no power-off, no metadata service)."""
        (self.directory / "user-data").write_text(script)
        assert subprocess.run(["bash", "-n", str(self.directory / "user-data")], check=False).returncode == 0
        env = {
            "PATH": self.path,
            "HOME": str(self.directory),
            "COILED_OFFLINE": "1",
            "COILED_NODE_ROOT": str(self.root),
            "COILED_INSTANCE_ID": "i-0123456789abcdef0",
            "PIP_NO_INDEX": "1",  # the only package is the local wheel
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        return subprocess.run(["bash", "-c", script], env=env, cwd=self.directory, timeout=180, check=False)

    def log(self) -> str:
        return (self.root / "node.log").read_text()

    def report(self) -> dict | None:
        path = self.root / "report.json"
        return json.loads(path.read_text()) if path.exists() else None


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """The image's Python: a fresh venv with pip (what ``python`` is in the container)."""
    path = tmp_path_factory.mktemp("image") / "python"
    venv.create(path, with_pip=True)
    return path


@pytest.fixture
def node(tmp_path, image) -> _Node:
    return _Node(tmp_path, image)


def _render(node: _Node, **extra) -> str:
    bundle = node.put("agent/coiled_core-test.zip", _reporting_bundle())
    return bootstrap.render(
        "c", {"cluster_name": "c"}, [], "3.11", "abc", bundle, container="ghcr.io/dask/dask:latest",
        software="team/on-image", log_prefix="logs/c/", **extra,
    )


def test_a_container_gets_pip_packages_post_build_and_local_code_before_the_agent(node, tmp_path):
    wheel = _wheel(tmp_path)
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as zipped:
        zipped.writestr("my_local_code.py", "ANSWER = 42\n")
    script = _render(
        node,
        image_requirements=[f"coiled-tiny-pkg @ {wheel.as_uri()}"],
        post_build=bootstrap.post_build_script(
            ['python -c "import coiled_tiny_pkg"', 'echo "$VIRTUAL_ENV $CONDA_PREFIX $(command -v python)" > "$VIRTUAL_ENV/post-build-ran"']
        ),
        local_code=node.put("agent/code-x.zip", code.getvalue()),
    )
    result = node.boot(script)
    log = node.log()
    report = node.report()
    assert report is not None, log
    prefix = report["prefix"]
    # pip installed on top of the image, before post_build, which ran with the image's Python as
    # the environment, before the agent, which sees all three (and its bundle first on the path).
    assert report["pip"] == "tiny", log
    assert report["post_build"] == [prefix, prefix, f"{prefix}/bin/python"], log
    assert report["local"] == 42, log
    assert report["pythonpath"] == f"{node.root}/agent.zip:{node.root}/code"
    assert result.returncode == 0
    # Everything was fetched with the node's role from the owner's bucket; no log upload was needed.
    assert [c.split()[1] for c in node.calls("aws")] == ["get-object", "get-object"]
    assert node.object("logs/c/i-0123456789abcdef0.log") is None
    (docker,) = node.calls("docker")
    assert "ghcr.io/dask/dask:latest sh " in docker


def test_a_container_whose_pip_install_fails_powers_off_with_pips_message_uploaded(node):
    script = _render(node, image_requirements=["coiled-missing-pkg==9"], post_build=bootstrap.post_build_script(["touch never"]))
    node.boot(script)
    assert node.report() is None  # the agent never ran
    uploaded = node.object("logs/c/i-0123456789abcdef0.log").decode()
    assert "coiled-missing-pkg==9" in uploaded and "No matching distribution" in uploaded
    assert "installing the pip packages of software environment team/on-image in the image failed" in uploaded
    assert "preparing the image ghcr.io/dask/dask:latest failed" in uploaded
    assert not (node.root / "never").exists()


def test_a_failing_post_build_in_a_container_fails_the_node_with_its_output(node):
    script = _render(node, post_build=bootstrap.post_build_script(["echo about to fail", "exit 3", "echo never"]))
    node.boot(script)
    assert node.report() is None
    uploaded = node.object("logs/c/i-0123456789abcdef0.log").decode()
    assert "about to fail" in uploaded and "never" not in uploaded.replace("echo never", "")
    assert "post_build of software environment team/on-image failed (exit code 3)" in uploaded


def test_a_post_build_script_from_the_bucket_runs_only_with_its_sha256(node):
    script_text = bootstrap.post_build_script(['echo fetched > "$VIRTUAL_ENV/post-build-ran"'])
    stored = node.put("agent/post-build-x.sh", script_text.encode())
    # Replaced after the client uploaded it: refused, and nothing of it runs.
    node.put(stored.key, b"touch tampered\n")
    node.boot(_render(node, post_build=stored))
    assert node.report() is None and not (node.root / "tampered").exists()
    uploaded = node.object("logs/c/i-0123456789abcdef0.log").decode()
    assert f"refusing to run the post_build script s3://{BUCKET}/{stored.key}" in uploaded and stored.sha256 in uploaded
    # As uploaded: it runs.
    node.put(stored.key, script_text.encode())
    node.boot(_render(node, post_build=stored))
    assert node.report()["post_build"] == ["fetched"], node.log()


def test_long_post_build_scripts_are_not_inline_and_every_variant_is_valid_bash(tmp_path):
    bundle = StoredObject(BUCKET, "agent/b.zip", "0" * 64, OWNER, "us-east-1")
    stored = StoredObject(BUCKET, "agent/post-build-1.sh", "1" * 64, OWNER, "us-east-1")
    code = StoredObject(BUCKET, "agent/code-2.zip", "2" * 64, OWNER, "us-east-1")
    for container in (None, "daskdev/dask"):
        for post_build in (None, "set -e\necho 'it''s' \"$HOME\" `x` $(y)\n", stored):
            script = bootstrap.render("c", {}, ["distributed"], "3.11", "abc", bundle, container=container,
                                      image_requirements=["x"] if container else None, post_build=post_build, local_code=code)
            path = tmp_path / "user-data"
            path.write_text(script)
            assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
            if isinstance(post_build, StoredObject):
                assert f"POST_BUILD_KEY={stored.key}" in script and stored.sha256 in script
    long = bootstrap.post_build_script([f"echo {i:04d}" + "x" * 100 for i in range(60)])
    assert len(long) > bootstrap.POST_BUILD_INLINE_BYTES
    foreign = StoredObject("someone-elses", "agent/code-2.zip", "2" * 64, OWNER, "us-east-1")
    with pytest.raises(ValueError, match="bucket"):
        bootstrap.render("c", {}, [], "3.11", "abc", bundle, local_code=foreign)


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
            "# " + "padding " * (bootstrap.POST_BUILD_INLINE_BYTES // 8),
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


@pytest.mark.skipif(shutil.which("aws") is None, reason="no AWS CLI here: a node whose pip build failed has no boto3 to ship its log")
def test_a_failing_pip_build_fails_the_start_with_pips_message(offline_ec2):
    """Without boto3 (pip failed before installing it), the node ships its log with the AWS CLI,
    which Amazon Linux has; here, the one on this machine's PATH."""
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
    assert "No matching distribution found for coiled-no-such-package-xyz" in message, message
    assert "building software environment" in message and "failed; powering off" in message, message
