"""The VM boot script, run for real with bash: values stay data, only verified code runs, and a
software environment is built once, packed, and fetched by every later node.

The artifact store is a directory (:mod:`coiled_core.testing.directory_store`, the same contract
as every backend's store program). The environments are built for real with uv from a tiny local
wheel. docker, which this machine cannot run, is a stand-in that runs the command with a fresh
venv's Python as the image's, so what runs inside the image runs for real too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import venv
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from coiled_core.node import envpack
from coiled_core.node.bootstrap import (
    USER_DATA_LIMIT,
    BootSoftware,
    StoredFile,
    post_build_script,
    render_boot_script,
)
from coiled_core.node.bundle import agent_bundle
from coiled_core.testing.directory_store import directory_store
from coiled_core.testing.wheels import tiny_wheel

UV = shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable))
PYTHON = "%d.%d" % sys.version_info[:2]


#: The agent of the container tests: it reports what it can see, in the node's root.
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
image = args.pop(0)
env["PATH"] = {image!r} + "/bin:" + env["PATH"]
os.execvpe(args[0], args, env)
"""


def _reporting_bundle() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("coiled_core/__init__.py", "")
        archive.writestr("coiled_core/node/__init__.py", "")
        archive.writestr("coiled_core/node/__main__.py", _REPORTING_AGENT)
    return buffer.getvalue()


class Cloud:
    """A directory store and the nodes that boot against it."""

    def __init__(self, directory: Path, image: Path | None = None):
        self.directory = directory
        self.objects = directory / "store"
        self.store = directory_store(self.objects)
        self.bin = directory / "bin"
        self.bin.mkdir(exist_ok=True)
        docker = self.bin / "docker"
        docker.write_text(_DOCKER.format(python=sys.executable, calls=str(directory / "docker.calls"), image=str(image or "/no-image")))
        docker.chmod(0o755)

    def put(self, key: str, data: bytes) -> StoredFile:
        path = self.objects / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return StoredFile(key, hashlib.sha256(data).hexdigest())

    def object(self, key: str) -> bytes | None:
        path = self.objects / key
        return path.read_bytes() if path.exists() else None

    def calls(self) -> list[str]:
        path = self.objects / ".calls"
        return path.read_text().splitlines() if path.exists() else []

    def docker_calls(self) -> list[str]:
        path = self.directory / "docker.calls"
        return path.read_text().splitlines() if path.exists() else []

    def render(self, software: BootSoftware, bundle: StoredFile, **extra) -> str:
        return render_boot_script(
            cluster="c", node_config=extra.pop("node_config", {"cluster_name": "c"}), software=software,
            store=self.store, bundle=bundle, log_key="logs/c/", **extra,
        )

    def boot(self, script: str, node: str, build_only: bool = False, **env_extra: str) -> "Node":
        directory = self.directory / node
        directory.mkdir()
        (directory / "user-data").write_text(script)
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": os.environ.get("HOME", str(self.directory)),
            "COILED_OFFLINE": "1",
            "COILED_NODE_ROOT": str(directory / "root"),
            "COILED_INSTANCE_ID": node,
            "COILED_UV": UV or "",
            **{k: os.environ[k] for k in ("SSL_CERT_FILE", "SSL_CERT_DIR", "UV_CACHE_DIR", "PIP_CONFIG_FILE") if k in os.environ},
            **env_extra,
        }
        if build_only:
            env["COILED_BUILD_ONLY"] = "1"
        proc = subprocess.Popen(["bash", str(directory / "user-data")], env=env, cwd=directory)
        return Node(directory / "root", proc)


class Node:
    def __init__(self, root: Path, proc: subprocess.Popen):
        self.root, self.proc = root, proc

    def wait(self) -> int:
        return self.proc.wait(timeout=240)

    def log(self) -> str:
        path = self.root / "node.log"
        return path.read_text() if path.exists() else ""

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
def cloud(tmp_path, image) -> Cloud:
    return Cloud(tmp_path, image)


CONTAINER = BootSoftware(name="team/on-image", env_hash="abc", python=PYTHON, container="ghcr.io/dask/dask:latest")


# -- the script itself ------------------------------------------------------------------------
def test_every_variant_fits_user_data_with_room_to_spare_and_passes_shellcheck(tmp_path):
    from coiled_core.testing.directory_store import directory_store

    store = directory_store(tmp_path / "s")
    # As large as the largest store program of a built-in backend (AWS's, about 2 KB).
    store = replace(store, program=store.program + "#" * 1200 + "\n", requirements=("boto3",))
    bundle = StoredFile("agent/b.zip", "0" * 64)
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=os.path.dirname(sys.executable))
    for container in (None, "daskdev/dask"):
        for post_build in (None, "set -e\necho 'it''s' \"$HOME\" `x` $(y)\n", StoredFile("agent/pb.sh", "1" * 64)):
            software = BootSoftware(
                name="s", env_hash="h", python=PYTHON, requirements=("dask[distributed]==2024.1.0", "pluggy"),
                post_build=post_build, container=container, image_requirements=("x",) if container else (),
            )
            script = render_boot_script(
                cluster="c", node_config={"cluster_name": "c", "x": "y" * 1500}, software=software, store=store,
                bundle=bundle, local_code=StoredFile("agent/code.zip", "2" * 64), log_key="logs/c/",
                node_id_command="curl -s http://169.254.169.254/latest/meta-data/instance-id",
            )
            assert len(script.encode()) < 0.8 * USER_DATA_LIMIT
            path = tmp_path / "user-data"
            path.write_text(script)
            assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
            if shellcheck:
                checked = subprocess.run([shellcheck, "--severity=warning", "--shell=bash", str(path)], capture_output=True, text=True)
                assert checked.returncode == 0, checked.stdout
    with pytest.raises(ValueError, match="over the 16384-byte limit"):
        render_boot_script(cluster="c", node_config={"x": "y" * USER_DATA_LIMIT}, software=software, store=store, bundle=bundle)


def test_a_store_program_cannot_end_a_heredoc_early(tmp_path):
    store = directory_store(tmp_path)
    bad = replace(store, program="print(1)\nCOILED_STORE_PROGRAM\nrm -rf /\n")
    with pytest.raises(ValueError, match="COILED_STORE_PROGRAM"):
        render_boot_script(cluster="c", node_config={}, software=CONTAINER, store=bad, bundle=StoredFile("k", "0"))


def test_values_are_never_run_by_the_shell_and_come_out_verbatim(cloud, tmp_path):
    marker = tmp_path / "pwned"
    tricky = f"__BUNDLE_KEY__ __CONTAINER__ __NODE_JSON__ $(touch {marker}) `touch {marker}` 'q' \"d\" \\n"
    config = {"cluster_name": "c", "environ": {"TRICKY": tricky}, "lifecycle": {"note": "COILED_NODE_JSON"}}
    bundle = cloud.put("agent/bundle.zip", _reporting_bundle())
    container = f"$(touch {marker})`touch {marker}`"
    software = replace(CONTAINER, container=container, image_requirements=(f"pkg==1.0; os_name != '{tricky}'",))
    node = cloud.boot(cloud.render(software, bundle, node_config=config), "i-1")
    node.wait()
    assert not marker.exists()
    assert json.loads((node.root / "node.json").read_text()) == config
    (docker,) = cloud.docker_calls()
    assert container in docker  # one argument, verbatim


def test_a_bundle_with_another_sha256_is_refused_and_nothing_runs(cloud):
    cloud.put("agent/bundle.zip", _reporting_bundle())
    node = cloud.boot(cloud.render(CONTAINER, StoredFile("agent/bundle.zip", "0" * 64)), "i-1")
    assert node.wait() == 1
    assert cloud.docker_calls() == [] and not (node.root / "agent.zip").exists()
    uploaded = cloud.object("logs/c/i-1.log").decode()
    assert "refusing to run the agent bundle agent/bundle.zip" in uploaded and "0" * 64 in uploaded


_SLOW_CP = """#!{python}
# GNU cp (9.x) on a loaded machine: it looks at its source, then a moment later opens it, and
# refuses a source replaced in between. The moment is made long here, so the race always shows.
import os, shutil, sys, time
source, target = sys.argv[-2:]
seen = os.stat(source)
time.sleep(0.2)
with open(source, "rb") as f:
    if os.fstat(f.fileno()).st_ino != seen.st_ino:
        sys.exit(f"cp: skipping file {{source!r}}, as it was replaced while being copied")
    with open(target, "wb") as out:
        shutil.copyfileobj(f, out)
"""


def _slow_cp(tmp_path: Path) -> Path:
    directory = tmp_path / "slow-bin"
    directory.mkdir()
    (directory / "cp").write_text(_SLOW_CP.format(python=sys.executable))
    (directory / "cp").chmod(0o755)
    return directory


def test_nodes_booting_at_once_copy_the_shared_bundle_cache_safely(cloud, tmp_path):
    # Nodes sharing one cache (COILED_ENV_CACHE) replace its bundle while others copy it: here a
    # neighbour replaces it (same content, a new file each time) for the whole boot.
    cache = tmp_path / "shared-cache"
    bundle = cloud.put("agent/bundle.zip", _reporting_bundle())
    cached = cache / "bundles" / f"{bundle.sha256}.zip"
    cached.parent.mkdir(parents=True)
    data = _reporting_bundle()
    stop = threading.Event()

    def neighbour() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            fresh = cached.with_name(f"neighbour.{n}")
            fresh.write_bytes(data)
            os.replace(fresh, cached)

    replacing = threading.Thread(target=neighbour, daemon=True)
    replacing.start()
    try:
        path = f"{_slow_cp(tmp_path)}{os.pathsep}{cloud.bin}{os.pathsep}{os.environ['PATH']}"
        nodes = [cloud.boot(cloud.render(CONTAINER, bundle), f"i-{i}", COILED_ENV_CACHE=str(cache), PATH=path) for i in range(4)]
        codes = [node.wait() for node in nodes]
    finally:
        stop.set()
        replacing.join(10)
    for node, code in zip(nodes, codes):
        assert code == 0 and node.report() is not None, node.log()
        assert (node.root / "agent.zip").read_bytes() == data


# -- the container path -----------------------------------------------------------------------
def test_a_container_gets_pip_packages_post_build_and_local_code_before_the_agent(cloud, tmp_path):
    wheel = tiny_wheel(tmp_path)
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as zipped:
        zipped.writestr("my_local_code.py", "ANSWER = 42\n")
    software = replace(
        CONTAINER,
        image_requirements=(f"coiled-tiny-pkg @ {wheel.as_uri()}",),
        post_build=post_build_script(
            ['python -c "import coiled_tiny_pkg"', 'echo "$VIRTUAL_ENV $CONDA_PREFIX $(command -v python)" > "$VIRTUAL_ENV/post-build-ran"']
        ),
    )
    bundle = cloud.put("agent/bundle.zip", _reporting_bundle())
    node = cloud.boot(cloud.render(software, bundle, local_code=cloud.put("agent/code-x.zip", code.getvalue())), "i-1")
    assert node.wait() == 0, node.log()
    report = node.report()
    assert report is not None, node.log()
    prefix = report["prefix"]
    assert report["pip"] == "tiny", node.log()
    assert report["post_build"] == [prefix, prefix, f"{prefix}/bin/python"], node.log()
    assert report["local"] == 42
    assert report["pythonpath"] == f"{node.root}/agent.zip:{node.root}/code"
    assert cloud.object("logs/c/i-1.log") is None  # no failure, no upload by the script
    assert "ghcr.io/dask/dask:latest sh " in cloud.docker_calls()[0]


def test_a_failing_pip_install_or_post_build_in_a_container_fails_the_node_with_its_output(cloud):
    bundle = cloud.put("agent/bundle.zip", _reporting_bundle())
    software = replace(CONTAINER, image_requirements=("coiled-missing-pkg==9",), post_build=post_build_script(["touch never"]))
    node = cloud.boot(cloud.render(software, bundle), "i-1", PIP_NO_INDEX="1")
    node.wait()
    assert node.report() is None
    uploaded = cloud.object("logs/c/i-1.log").decode()
    assert "coiled-missing-pkg==9" in uploaded
    assert "installing the pip packages of software environment team/on-image in the image failed" in uploaded
    assert "preparing the image ghcr.io/dask/dask:latest failed" in uploaded
    software = replace(CONTAINER, post_build=post_build_script(["echo about to fail", "exit 3", "echo never"]))
    node = cloud.boot(cloud.render(software, bundle), "i-2")
    node.wait()
    uploaded = cloud.object("logs/c/i-2.log").decode()
    assert "about to fail" in uploaded and "post_build of software environment team/on-image failed (exit code 3)" in uploaded


def test_a_stored_post_build_script_runs_only_with_its_sha256(cloud):
    bundle = cloud.put("agent/bundle.zip", _reporting_bundle())
    text = post_build_script(['echo fetched > "$VIRTUAL_ENV/post-build-ran"'])
    stored = cloud.put("agent/post-build-x.sh", text.encode())
    cloud.put(stored.key, b"touch tampered\n")  # replaced after the client uploaded it
    node = cloud.boot(cloud.render(replace(CONTAINER, post_build=stored), bundle), "i-1")
    node.wait()
    assert node.report() is None and not (node.root / "tampered").exists()
    assert f"refusing to run the post_build script {stored.key}" in cloud.object("logs/c/i-1.log").decode()
    cloud.put(stored.key, text.encode())
    node = cloud.boot(cloud.render(replace(CONTAINER, post_build=stored), bundle), "i-2")
    node.wait()
    assert node.report()["post_build"] == ["fetched"], node.log()


# -- environments: built once, packed, fetched --------------------------------------------------
@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory) -> bytes:
    return agent_bundle(tmp_path_factory.mktemp("bundle")).read_bytes()


def _software(tmp_path: Path, env_hash: str, **extra) -> BootSoftware:
    wheel = tiny_wheel(tmp_path)
    extra.setdefault("build_id", "build-1")
    return BootSoftware(name="team/tiny", env_hash=env_hash, python=PYTHON, requirements=(f"coiled-tiny-pkg @ {wheel.as_uri()}",), **extra)


def _pinned(cloud: Cloud, software: BootSoftware, build_id: str = "build-2") -> BootSoftware:
    """``software`` as the client hands it to the nodes of its next cluster, after recording the
    pack its first cluster (build) uploaded."""
    with envpack.client_store(cloud.store) as (store, work):
        assert envpack.record_cluster_packs(software, store, [os.uname().machine], work)
        return replace(envpack.pinned_software(software, store, [os.uname().machine], work), build_id=build_id)


def _paths(cloud: Cloud, key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in cloud.calls():
        command, object_key = line.split(" ", 1)
        if object_key.startswith(f"envs/{key}/"):
            kind = object_key.rsplit("/", 1)[1]
            kind = "pack" if kind.endswith(".tar.zst") else kind
            counts[f"{command} {kind}"] = counts.get(f"{command} {kind}", 0) + 1
    return counts


@pytest.mark.skipif(UV is None, reason="uv is not installed")
def test_nodes_booting_at_once_build_once_and_later_nodes_fetch_the_pack(cloud, tmp_path, real_bundle):
    software = _software(tmp_path, "once", post_build=post_build_script(['echo "$VIRTUAL_ENV" > "$VIRTUAL_ENV/built-at"']))
    bundle = cloud.put("agent/bundle.zip", real_bundle)
    script = cloud.render(software, bundle)
    nodes = [cloud.boot(script, f"i-{n}", build_only=True) for n in range(3)]
    assert [node.wait() for node in nodes] == [0, 0, 0], [node.log() for node in nodes]
    key = envpack.environment_key("once", PYTHON)
    counts = _paths(cloud, key)
    assert counts["create claim-1"] == 3 and counts["put pack"] == 1 and counts["put manifest.json"] == 1, counts
    logs = [node.log() for node in nodes]
    assert sum("ready (built and uploaded)" in log for log in logs) == 1
    assert sum("ready (waited for another node's pack, then fetched it)" in log for log in logs) == 2
    assert all("coiled: boot: software environment team/tiny ready in" in log for log in logs)
    # A node booting later (another cluster, whose client pinned the pack) fetches; its
    # environment works where it was unpacked.
    later = cloud.boot(cloud.render(_pinned(cloud, software), bundle), "i-later", build_only=True)
    assert later.wait() == 0
    assert "ready (fetched the pinned pack)" in later.log()
    env = Path((later.root / "environment.path").read_text())
    assert env.is_relative_to(later.root)
    ran = subprocess.run([str(env / "bin" / "coiled-tiny")], capture_output=True, text=True)
    assert ran.stdout.strip() == "tiny main", ran.stderr
    ran = subprocess.run([str(env / "bin" / "python"), "-c", "import sys, coiled_tiny_pkg; print(sys.prefix)"], capture_output=True, text=True)
    assert ran.stdout.strip() == str(env)
    # post_build ran once, on the builder; its output travelled in the pack.
    assert (env / "built-at").read_text().strip() != str(env)
    assert _paths(cloud, key)["put pack"] == 1


@pytest.mark.skipif(UV is None, reason="uv is not installed")
def test_a_corrupt_pack_is_rebuilt_and_replaced(cloud, tmp_path, real_bundle):
    software = _software(tmp_path, "corrupt")
    script = cloud.render(software, cloud.put("agent/bundle.zip", real_bundle))
    first = cloud.boot(script, "i-1", build_only=True)
    assert first.wait() == 0
    key = envpack.environment_key("corrupt", PYTHON)
    prefix = envpack.build_prefix(key, "build-1")
    manifest = json.loads(cloud.object(f"{prefix}manifest.json"))
    pack = cloud.objects / manifest["object"]
    pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])  # a partial upload
    second = cloud.boot(script, "i-2", build_only=True)
    assert second.wait() == 0, second.log()
    assert "is corrupt" in second.log() and "ready (built (the stored pack was corrupt) and uploaded)" in second.log()
    replaced = json.loads(cloud.object(f"{prefix}manifest.json"))
    assert replaced["built_by"] == "i-2"
    assert envpack.file_sha256(cloud.objects / replaced["object"]) == replaced["sha256"]
    third = cloud.boot(script, "i-3", build_only=True)
    assert third.wait() == 0 and "ready (fetched the pack)" in third.log()


@pytest.mark.skipif(UV is None, reason="uv is not installed")
def test_a_failed_build_fails_every_waiting_node_with_uvs_message_and_a_later_boot_retries(cloud, tmp_path, real_bundle):
    software = BootSoftware(name="team/broken", env_hash="broken", python=PYTHON, requirements=("coiled-no-such-package-xyz==1.2.3",), build_id="b")
    script = cloud.render(software, cloud.put("agent/bundle.zip", real_bundle))
    nodes = [cloud.boot(script, f"i-{n}", build_only=True, UV_OFFLINE="1") for n in range(2)]
    assert [node.wait() for node in nodes] == [1, 1]
    for node in nodes:
        uploaded = cloud.object(f"logs/c/{node.root.parent.name}.log").decode()
        assert "coiled-no-such-package-xyz" in uploaded, uploaded
        assert "preparing software environment team/broken failed; powering off" in uploaded
    key = envpack.environment_key("broken", PYTHON)
    failed = json.loads(cloud.object(f"{envpack.build_prefix(key, 'b')}failed.json"))
    # One attempt, or two when the second node looked only after the first had failed.
    assert failed["attempt"] in (1, 2) and failed["kind"] == "build" and "coiled-no-such-package-xyz" in failed["message"]
    later = cloud.boot(script, "i-later", build_only=True, UV_OFFLINE="1")
    later.wait()
    assert f"building it (attempt {failed['attempt'] + 1})" in later.log()


def test_without_uv_the_environment_is_built_with_pip_and_the_log_says_so(tmp_path, capsys):
    wheel = tiny_wheel(tmp_path)
    request = envpack.EnvironmentRequest(
        software="team/tiny", env_hash="pip", python=PYTHON, requirements=[str(wheel)], interpreter=sys.executable, uv="",
        cache=tmp_path / "envs",
    )
    target = tmp_path / "envs" / request.key
    assert envpack.build(request, target, None) == "pip"
    assert "uv is not available on this machine: building with pip" in capsys.readouterr().out
    ran = subprocess.run([str(target / "bin" / "python"), "-c", "import coiled_tiny_pkg"], check=False)
    assert ran.returncode == 0


def _empty_environment(tmp_path: Path, env_hash: str, **extra) -> tuple[envpack.EnvironmentRequest, envpack.StoreProgram]:
    """A request for an environment without packages, and a directory store's program."""
    store = directory_store(tmp_path / "store")
    program = tmp_path / "store.py"
    program.write_text(store.program)
    request = envpack.EnvironmentRequest(
        software="team/empty", env_hash=env_hash, python=PYTHON, requirements=[], interpreter=sys.executable, uv=UV or "",
        cache=tmp_path / "envs", **{"build_id": "build-1", **extra},
    )
    return request, envpack.StoreProgram(program, env=dict(os.environ, COILED_STORE=json.dumps(store.settings)))


def test_waiting_for_a_pack_is_bounded_then_the_node_builds_itself(tmp_path):
    request, store = _empty_environment(tmp_path, "stuck", wait_seconds=1, poll_seconds=0.2)
    # Another node claimed the build and never finished (nor failed).
    prefix = tmp_path / "store" / envpack.build_prefix(request.key, request.build_id)
    claim = prefix / "claim-1"
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"node": "i-gone", "created_at": 0 + __import__("time").time()}))
    env, how = envpack.prepare_environment(request, store)
    assert how == "built after waiting in vain, and uploaded" and (env / ".complete").exists()
    assert (prefix / "manifest.json").exists()


def test_nodes_of_one_machine_share_its_cache(tmp_path):
    request, store = _empty_environment(tmp_path, "shared")
    results = []
    threads = [threading.Thread(target=lambda: results.append(envpack.prepare_environment(request, store))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(how for _, how in results) == ["built and uploaded", "cache hit on this machine"]


# -- packs are trusted only when pinned -------------------------------------------------------------
def _plant_pack(store_dir: Path, object_key: str, manifest_key: str | None, tmp_path: Path) -> str:
    """Put a pack the way a compromised node could (its content marked ``planted``), with a
    manifest naming it at ``manifest_key``; its sha256."""
    planted = tmp_path / "planted-env"
    (planted / "bin").mkdir(parents=True)
    (planted / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (planted / "planted").write_text("run me")
    (store_dir / object_key).parent.mkdir(parents=True, exist_ok=True)
    sha256, size = envpack.pack(planted, store_dir / object_key)
    if manifest_key is not None:
        manifest = {"object": object_key, "sha256": sha256, "size": size, "prefix": str(planted), "built_by": "i-evil"}
        (store_dir / manifest_key).parent.mkdir(parents=True, exist_ok=True)
        (store_dir / manifest_key).write_text(json.dumps(manifest))
    return sha256


@pytest.mark.skipif(UV is None, reason="uv is not installed")
def test_a_planted_pack_is_never_run_by_a_node_whose_config_pins_nothing(tmp_path):
    """A compromised node writes a manifest and a pack where a later cluster's nodes look: a node
    that was given no pin builds the environment itself instead."""
    request, store = _empty_environment(tmp_path, "planted")
    root = tmp_path / "store"
    _plant_pack(root, f"envs/{request.key}/evil.tar.zst", f"envs/{request.key}/manifest.json", tmp_path)
    env, how = envpack.prepare_environment(request, store)
    assert how != "fetched the pack" and "built" in how
    assert not (env / "planted").exists() and (env / ".complete").exists()


def _malicious_pack(path: Path, outside: Path) -> None:
    """A pack whose members reach outside its target: a symlink to ``outside`` and a file
    written through it, a link to an absolute path, and a file owned by another user."""
    import tarfile

    import zstandard

    def member(name: str, **fields) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        for key, value in fields.items():
            setattr(info, key, value)
        return info

    with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as compressed:
        with tarfile.open(fileobj=compressed, mode="w|") as archive:
            archive.addfile(member("./escape", type=tarfile.SYMTYPE, linkname=str(outside)))
            data = b"written outside"
            archive.addfile(member("./escape/planted", size=len(data)), io.BytesIO(data))
            archive.addfile(member("./passwd", type=tarfile.SYMTYPE, linkname="/etc/passwd"))
            archive.addfile(member("./up", type=tarfile.SYMTYPE, linkname="../../.."))
            owned = b"mine"
            archive.addfile(member("./owned", size=len(owned), uid=0, gid=0, uname="root", gname="root", mode=0o6777), io.BytesIO(owned))


def test_unpacking_writes_nothing_through_links_and_keeps_no_foreign_owner(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    pack = tmp_path / "evil.tar.zst"
    _malicious_pack(pack, outside)
    target = tmp_path / "env"
    with pytest.raises(Exception):
        envpack.unpack(pack, target)
    assert not (outside / "planted").exists()
    for name in ("escape", "passwd", "up"):
        assert not (target / name).is_symlink(), name


def test_unpacking_resets_owner_and_special_bits(tmp_path):
    import tarfile

    import zstandard

    pack = tmp_path / "owned.tar.zst"
    with open(pack, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as compressed:
        with tarfile.open(fileobj=compressed, mode="w|") as archive:
            info = tarfile.TarInfo("./owned")
            info.size, info.uid, info.gid, info.uname, info.gname, info.mode = 4, 12345, 12345, "someone", "them", 0o6777
            archive.addfile(info, io.BytesIO(b"mine"))
    envpack.unpack(pack, tmp_path / "env")
    stat = (tmp_path / "env" / "owned").stat()
    assert (stat.st_uid, stat.st_gid) == (os.getuid(), os.getgid())
    assert stat.st_mode & 0o7022 == 0


def _as_software(request: envpack.EnvironmentRequest) -> BootSoftware:
    return BootSoftware(name=request.software, env_hash=request.env_hash, python=request.python, build_id=request.build_id)


@pytest.mark.skipif(UV is None, reason="uv is not installed")
def test_a_pinned_pack_replaced_in_the_store_is_refused_and_the_node_builds(tmp_path, capsys):
    request, store = _empty_environment(tmp_path, "swapped")
    assert envpack.prepare_environment(request, store)[1] == "built and uploaded"
    software = _as_software(request)
    machine = os.uname().machine
    assert envpack.record_built_packs(store, software, request.build_id, [machine], tmp_path) == [request.key]
    pin = envpack.read_pins(store, software, [machine], tmp_path)[request.key]
    # A node of that build (its prefix is writable to it) replaces the pinned pack later.
    _plant_pack(tmp_path / "store", pin["object"], None, tmp_path)
    later = replace(request, cache=tmp_path / "another-machine", pins={request.key: pin}, build_id="build-2")
    env, how = envpack.prepare_environment(later, store)
    assert how == "built and uploaded" and not (env / "planted").exists()
    assert f"refusing the pinned pack: the pack {pin['object']} is corrupt" in capsys.readouterr().out
    # The client of the later cluster pins what its nodes built.
    assert envpack.record_built_packs(store, software, "build-2", [machine], tmp_path) == [request.key]
    assert envpack.read_pins(store, software, [machine], tmp_path)[request.key]["object"].startswith(envpack.build_prefix(request.key, "build-2"))


def test_a_manifest_naming_a_pack_outside_its_build_is_never_pinned_nor_fetched(tmp_path):
    request, store = _empty_environment(tmp_path, "outside")
    root = tmp_path / "store"
    prefix = envpack.build_prefix(request.key, request.build_id)
    _plant_pack(root, f"envs/{request.key}/evil.tar.zst", f"{prefix}manifest.json", tmp_path)
    software = _as_software(request)
    assert envpack.record_built_packs(store, software, request.build_id, [os.uname().machine], tmp_path) == []
    assert not (root / envpack.pin_key(request.key)).exists()


def test_the_boot_script_hands_pins_and_the_build_to_the_node(tmp_path):
    pin = {"object": "envs/k/builds/b/" + "0" * 64 + ".tar.zst", "sha256": "0" * 64, "prefix": "/opt/coiled/envs/k"}
    software = BootSoftware(name="s", env_hash="h", python=PYTHON, pins={"k": pin}, build_id="b")
    store = directory_store(tmp_path)
    script = render_boot_script(cluster="c", node_config={}, software=software, store=store, bundle=StoredFile("agent/x", "0" * 64))
    environment = json.loads(script.split("<<'COILED_ENVIRONMENT_JSON'\n", 1)[1].split("\nCOILED_ENVIRONMENT_JSON", 1)[0])
    assert environment["pins"] == {"k": pin} and environment["build_id"] == "b"


def test_the_key_of_a_pack_covers_the_nodes_own_requirements():
    """Two backends' nodes need different SDKs in one software environment: their packs differ."""
    from coiled_core.node.bootstrap import boot_software
    from coiled_core.software import SoftwareEnvironment

    software = SoftwareEnvironment(name="team/x", kind="pip", pip=["toolz"])
    aws, gcp = boot_software(software, ("distributed", "boto3")), boot_software(software, ("distributed", "google-cloud-storage"))
    assert aws.env_hash != gcp.env_hash
    assert boot_software(software, ("distributed", "boto3")).env_hash == aws.env_hash
