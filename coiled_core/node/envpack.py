"""Software environments built once and fetched: the environment step of every VM node's boot.

A node needs a Python environment holding its software environment's packages. Building it with
pip on every node is most of a cloud cluster's start (and 100 parallel builds against the package
index), so environments are *packs*: the first node that needs one builds it (with uv; pip only
when uv is unavailable), packs it (tar, zstd) and uploads it to its backend's artifact store;
every later node, of this cluster or a later one, downloads and unpacks it.

**Trust.** Anyone who can write the store could plant a pack, and a node runs its pack as the
user's environment. So a node runs a pack from the store only if its sha256 was *pinned by the
client* in the node's ``environment.json`` (as the agent bundle's sha256 is in the boot script),
or if its own build made it. The client is the trust anchor: it keeps pins under ``pins/`` (a
prefix no node may write), hands a new cluster's nodes the pins it finds
(:func:`pinned_software`), and once the cluster's scheduler answers, before any user code runs
there, pins what the cluster's nodes built (:func:`record_cluster_packs`, from the backend's
``cluster_started`` hook). ``coiled env build`` builds, uploads and pins on the client
(:func:`build_environment_pack`).

**Keys.** A pack is keyed by the environment's spec hash (with the nodes' own requirements),
its Python ``major.minor`` and the machine's architecture (:func:`environment_key`). In the
store:

- ``pins/<key>.json``: the client's pin: the pack's object, sha256 and the prefix it was built at.
- ``envs/<key>/builds/<build id>/``: what the nodes of one build (one cluster, with a fresh
  random build id) share while none is pinned; a node's role may write its own build's prefix
  only (AWS: ``coiled_aws.iam``):

  - ``manifest.json``: the finished pack: its object name, sha256 and size, and the prefix (path)
    it was built at. Written last, so a manifest always names a complete pack.
  - ``<sha256>.tar.zst``: the pack, named by its content, so two builders never interleave.
  - ``claim-<n>``: who builds attempt ``n``. Created with the store's atomic create-if-absent,
    so of many nodes booting at once exactly one builds; the others wait for the manifest (at
    most ``wait_seconds``, then they build themselves).
  - ``failed.json``: the last failed attempt (its number and claim, the node, the build's own
    message). A node waiting on that claim fails at once with the message; a node booting later
    claims the next attempt and tries again.

A node given no build id builds for itself and shares nothing.

**Checks.** A pinned pack whose sha256 differs from the pin is refused, and the node builds the
environment instead (in its build, for its cluster's client to pin). A pack of its own build
whose sha256 differs from its manifest (corrupt, partial) is not used: one node (claiming
``claim-<n>-replacing-<sha256>``) builds the environment and uploads a new pack and manifest in
its place, the others wait for it as for a first build. Unpacking uses tarfile's ``data``
filter: nothing is written outside the target or through a link, and no file keeps a foreign
owner or set-id bits.

**Relocation.** A pack unpacked under another path than it was built at is fixed up: the
``home`` of ``pyvenv.cfg`` and the ``python`` links point at this machine's interpreter (the same
``major.minor``), and scripts in ``bin/`` name the new path.

**The store** is the backend's *store program* (see :mod:`coiled_core.node.bootstrap`): a
Python program run as ``store get KEY TARGET`` (exit 2: no such object), ``store put PATH KEY``
and ``store create PATH KEY`` (exit 3: KEY exists).

This module runs in the node's boot tools environment, before the software environment exists:
it needs only the standard library and ``zstandard``. Run it as
``python -m coiled_core.node.envpack environment.json --interpreter PY --store PROGRAM ...``;
it logs each step and how long it took to stdout, and writes the environment's path to
``--result``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

#: Where packs live in a backend's artifact store.
STORE_PREFIX = "envs/"
#: Where the client keeps the pins of packs: written by clients only, never by a node.
PIN_PREFIX = "pins/"
#: A claim older than this with no manifest and no failure is taken for a builder that died.
STALE_CLAIM_SECONDS = 1800
#: How long a node waits for another node's pack before building itself.
DEFAULT_WAIT_SECONDS = 900
#: Lines of a failed build's output kept for its error message.
MESSAGE_LINES = 60


class EnvironmentBuildError(RuntimeError):
    """Building the environment failed; the message holds the build's own output."""


class CorruptPackError(EnvironmentBuildError):
    """A stored pack does not match its manifest (corrupt, partial) or cannot be unpacked."""


class StoreError(RuntimeError):
    """The artifact store could not be read or written."""


def say(message: str) -> None:
    print(f"coiled: environment: {message}", flush=True)


# -- the artifact store, through the backend's store program ----------------------------------
class StoreProgram:
    """The backend's store program, run as a subprocess (``get``, ``put``, ``create``)."""

    MISSING = 2
    EXISTS = 3

    def __init__(self, program: str | os.PathLike[str], python: str = sys.executable, env: dict[str, str] | None = None):
        self.command = [python, os.fspath(program)]
        self.env = env

    def _run(self, *args: str) -> int:
        done = subprocess.run([*self.command, *args], capture_output=True, text=True, env=self.env)
        if done.returncode not in (0, self.MISSING, self.EXISTS):
            raise StoreError(f"store {args[0]} {args[-1] if args[0] != 'get' else args[1]} failed: {done.stderr.strip()[-2000:]}")
        return done.returncode

    def get(self, key: str, target: Path) -> bool:
        """Download ``key`` to ``target``; False if there is no such object."""
        return self._run("get", key, os.fspath(target)) == 0

    def put(self, path: Path, key: str) -> None:
        """Upload ``path`` as ``key``, replacing what is there."""
        if self._run("put", os.fspath(path), key) != 0:
            raise StoreError(f"store put {key} failed")

    def create(self, path: Path, key: str) -> bool:
        """Upload ``path`` as ``key`` only if ``key`` does not exist (atomically); False if it did."""
        return self._run("create", os.fspath(path), key) == 0

    def get_json(self, key: str, scratch: Path) -> dict[str, Any] | None:
        """The JSON object at ``key`` (None if absent or unreadable)."""
        return get_json(self, key, scratch)

    def put_json(self, value: dict[str, Any], key: str, scratch: Path, create: bool = False) -> bool:
        return put_json(self, value, key, scratch, create)


def get_json(store: Any, key: str, scratch: Path) -> dict[str, Any] | None:
    """The JSON object at ``key`` of ``store`` (anything with the store program's ``get``), or
    None if absent or unreadable."""
    target = scratch / f".get-{os.getpid()}-{time.monotonic_ns()}"
    try:
        if not store.get(key, target):
            return None
        value = json.loads(target.read_text())
        return value if isinstance(value, dict) else None
    except (ValueError, OSError):
        return None
    finally:
        target.unlink(missing_ok=True)


def put_json(store: Any, value: dict[str, Any], key: str, scratch: Path, create: bool = False) -> bool:
    """Write ``value`` at ``key`` (``create``: only if absent; False if it existed)."""
    path = scratch / f".put-{os.getpid()}-{time.monotonic_ns()}"
    path.write_text(json.dumps(value))
    try:
        if create:
            return store.create(path, key)
        store.put(path, key)
        return True
    finally:
        path.unlink(missing_ok=True)


# -- the request ------------------------------------------------------------------------------
@dataclass
class EnvironmentRequest:
    """What to build: the ``environment.json`` a boot script writes, plus this machine's tools."""

    software: str
    env_hash: str
    python: str
    requirements: list[str]
    #: ``{"text": ...}`` (inline) or ``{"key": ..., "sha256": ...}`` (from the store), or None.
    post_build: dict[str, str] | None = None
    #: This machine's interpreter of ``python`` (major.minor).
    interpreter: str = sys.executable
    #: uv's path; empty: build with pip.
    uv: str = ""
    cache: Path = field(default_factory=lambda: Path("envs"))
    wait_seconds: float = DEFAULT_WAIT_SECONDS
    poll_seconds: float = 2.0
    node: str = field(default_factory=lambda: os.environ.get("COILED_INSTANCE_ID") or socket.gethostname())
    #: The packs the client pinned, by environment key: ``{"object", "sha256", "prefix"}``.
    pins: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: This cluster's build: where its nodes share a pack they build (empty: never uploaded).
    build_id: str = ""

    @property
    def key(self) -> str:
        return environment_key(self.env_hash, self.python)

    @property
    def pin(self) -> dict[str, Any] | None:
        """The pin of this machine's pack, if the client gave one (checked: see :func:`valid_pin`)."""
        pin = self.pins.get(self.key)
        return pin if valid_pin(pin) else None


def valid_pin(pin: Any) -> bool:
    """Whether ``pin`` has the shape of a pin: an object under ``envs/``, a hex sha256, a path."""
    return (
        isinstance(pin, dict)
        and isinstance(pin.get("object"), str)
        and pin["object"].startswith(STORE_PREFIX)
        and isinstance(pin.get("sha256"), str)
        and len(pin["sha256"]) == 64
        and all(c in "0123456789abcdef" for c in pin["sha256"])
        and isinstance(pin.get("prefix", ""), str)
    )


def pin_key(env_key: str) -> str:
    """Where the client keeps the pin of the pack of ``env_key`` (a prefix nodes may not write)."""
    return f"{PIN_PREFIX}{env_key}.json"


def build_prefix(env_key: str, build_id: str) -> str:
    """Where the nodes of one build (one cluster) share the pack of ``env_key`` they build."""
    if not build_id or not all(c.isalnum() or c == "-" for c in build_id):
        raise ValueError(f"a build id is letters, digits and '-', not {build_id!r}")
    return f"{STORE_PREFIX}{env_key}/builds/{build_id}/"


def new_build_id() -> str:
    """A fresh build id: one per cluster, so nothing of an earlier build is ever taken for its own."""
    import secrets

    return secrets.token_hex(8)


def environment_key(env_hash: str, python: str, machine: str | None = None) -> str:
    """The key of an environment's pack: spec hash, Python ``major.minor`` and architecture."""
    arch = (machine or platform.machine()).lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
    return f"{env_hash}-py{python}-{arch}"


# -- building ---------------------------------------------------------------------------------
def _run_logged(argv: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """Run ``argv``, its output going to ours (the node's log); on failure raise with its tail."""
    tail: collections.deque[str] = collections.deque(maxlen=MESSAGE_LINES)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, errors="replace")
    except OSError as e:
        raise EnvironmentBuildError(f"{what} failed: {e}") from e
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        tail.append(line.rstrip("\n"))
    code = proc.wait()
    sys.stdout.flush()
    if code != 0:
        raise EnvironmentBuildError(f"{what} failed (exit code {code}):\n" + "\n".join(tail))


def build(request: EnvironmentRequest, target: Path, post_build_script: str | None) -> str:
    """Build the environment at ``target`` (a venv of ``request.interpreter``): with uv, or pip
    when uv is unavailable; then ``post_build``. Returns which tool built it."""
    shutil.rmtree(target, ignore_errors=True)
    name = f"software environment {request.software}"
    if request.uv:
        tool = "uv"
        # --seed: post_build commands and users expect pip in the environment.
        _run_logged([request.uv, "venv", "--quiet", "--relocatable", "--seed", "--python", request.interpreter, str(target)], f"creating the venv of {name}")
        if request.requirements:
            _run_logged(
                [request.uv, "pip", "install", "--python", str(target / "bin" / "python"), *request.requirements],
                f"installing the packages of {name} with uv",
            )
    else:
        tool = "pip"
        say("uv is not available on this machine: building with pip (slower)")
        _run_logged([request.interpreter, "-m", "venv", str(target)], f"creating the venv of {name}")
        if request.requirements:
            _run_logged(
                [str(target / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *request.requirements],
                f"installing the packages of {name} with pip",
            )
    if post_build_script:
        script = target / ".post_build.sh"
        script.write_text(post_build_script)
        env = dict(os.environ, VIRTUAL_ENV=str(target), CONDA_PREFIX=str(target), PATH=f"{target / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        env.pop("PYTHONPATH", None)  # the boot tools' path is not the environment's
        say(f"running post_build of {name}")
        _run_logged(["bash", str(script)], f"post_build of {name}", env=env)
    return tool


# -- packing ----------------------------------------------------------------------------------
def pack(source: Path, target: Path) -> tuple[str, int]:
    """Write ``source`` as a zstd-compressed tar to ``target``; its sha256 and size."""
    import zstandard

    compressor = zstandard.ZstdCompressor(level=3, threads=-1)
    with open(target, "wb") as raw:
        with compressor.stream_writer(raw, closefd=False) as compressed:
            with tarfile.open(fileobj=compressed, mode="w|") as archive:
                archive.add(source, arcname=".")
    return file_sha256(target), target.stat().st_size


def _interpreter_link(member: tarfile.TarInfo) -> bool:
    """Whether ``member`` is a venv's link to the interpreter it was built with (``bin/python*``
    pointing at an absolute path): the one absolute link a pack holds, remade by :func:`relocate`."""
    parts = member.name.lstrip("./").split("/")
    return member.issym() and os.path.isabs(member.linkname) and len(parts) == 2 and parts[0] == "bin" and parts[1].startswith("python")


def _pack_filter(member: tarfile.TarInfo, target: str) -> tarfile.TarInfo | None:
    """tarfile's ``data`` filter: nothing outside ``target`` nor through a link, no absolute or
    escaping links, no device files, owner reset to the extracting user, no set-id bits; the
    interpreter links are skipped (see :func:`_interpreter_link`)."""
    if _interpreter_link(member):
        return None
    return tarfile.data_filter(member, target)


def unpack(source: Path, target: Path) -> list[str]:
    """Unpack a pack written by :func:`pack` into ``target`` (created), with tarfile's ``data``
    filter: a pack from the store may have been written by anyone who could write there, so
    nothing is written outside ``target`` or through a link, and nothing keeps a foreign owner.
    Returns the names of the interpreter links it skipped (``bin/python``), for :func:`relocate`.
    Raises ``tarfile.TarError`` (``FilterError``) for a member that breaks the rules."""
    import zstandard

    if not hasattr(tarfile, "data_filter"):
        raise EnvironmentBuildError("unpacking a pack safely needs Python 3.10.12, 3.11.4 or later (tarfile's extraction filters)")
    skipped: list[str] = []

    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        if _interpreter_link(member):
            skipped.append(member.name.rsplit("/", 1)[1])
        return _pack_filter(member, path)

    target.mkdir(parents=True)
    with open(source, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as compressed:
        with tarfile.open(fileobj=compressed, mode="r|") as archive:
            archive.extractall(target, filter=check)
    return skipped


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def relocate(env: Path, built_at: str, interpreter: str, links: list[str] | tuple[str, ...] = ()) -> None:
    """Make a venv built at ``built_at`` (another path, another machine) run from ``env`` with
    this machine's ``interpreter`` (same major.minor); ``links``: names in ``bin/`` to make as
    links to it (those :func:`unpack` skipped)."""
    real = os.path.realpath(interpreter)
    bin_dir = env / "bin"
    for name in links:
        link = bin_dir / name
        if not link.exists() and not link.is_symlink():
            bin_dir.mkdir(exist_ok=True)
            link.symlink_to(real)
    config = env / "pyvenv.cfg"
    if config.exists():
        lines = []
        for line in config.read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            if key == "home":
                line = f"home = {os.path.dirname(real)}"
            elif key == "executable":
                line = f"executable = {real}"
            lines.append(line)
        config.write_text("\n".join(lines) + "\n")
    for path in bin_dir.iterdir() if bin_dir.is_dir() else []:
        if path.is_symlink():
            if path.name.startswith("python") and os.path.isabs(os.readlink(path)):
                path.unlink()
                path.symlink_to(real)
            continue
        if not built_at or built_at == str(env) or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # a binary
        if built_at in text:
            path.write_text(text.replace(built_at, str(env)))


# -- the whole step ---------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise the nodes of one machine (or of one shared cache) on ``path``."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Preparer:
    """Gets one environment onto this machine: from its cache, from a pack, or by building."""

    def __init__(self, request: EnvironmentRequest, store: StoreProgram):
        self.request = request
        self.store = store
        # A node shares what it builds only with its own build (cluster): a pack from anywhere
        # else in the store is run only if the client pinned its sha256.
        self.prefix = build_prefix(request.key, request.build_id) if request.build_id else None
        self.target = request.cache / request.key
        self.scratch = request.cache

    def prepare(self) -> tuple[Path, str]:
        """The environment's path, and how it got here (for the log)."""
        self.request.cache.mkdir(parents=True, exist_ok=True)
        with _locked(self.request.cache / f"{self.request.key}.lock"):
            if (self.target / ".complete").exists():
                return self.target, "cache hit on this machine"
            pin = self.request.pin
            if pin is not None:
                try:
                    self._fetch(pin)
                    return self.target, "fetched the pinned pack"
                except CorruptPackError as e:
                    say(f"refusing the pinned pack: {e}; building the environment instead")
            if self.prefix is None:
                self._build_and_upload(None, None)
                return self.target, "built (no pin, and nowhere to share the pack)"
            return self.target, self._from_store()

    def _from_store(self) -> str:
        started = time.monotonic()
        waiting_on: str | None = None  # the claim whose build this node waits for
        corrupt: str | None = None  # sha256 of a stored pack found corrupt, to be replaced
        while True:
            assert self.prefix is not None
            manifest = self.store.get_json(self.prefix + "manifest.json", self.scratch)
            if manifest is not None and not str(manifest.get("object", "")).startswith(self.prefix):
                manifest = None  # a pack of this build is under its prefix
            if manifest is not None and manifest.get("sha256") != corrupt:
                try:
                    self._fetch(manifest)
                    return "fetched the pack" if waiting_on is None else "waited for another node's pack, then fetched it"
                except CorruptPackError as e:
                    say(f"{e}: it will be rebuilt and replaced")
                    corrupt, waiting_on = str(manifest.get("sha256")), None
                    continue
            failed = self.store.get_json(self.prefix + "failed.json", self.scratch) or {}
            last_failed = int(failed.get("attempt", 0))
            if waiting_on is not None and failed.get("claim") == waiting_on:
                if failed.get("kind") == "build":
                    raise EnvironmentBuildError(
                        f"building software environment {self.request.software} failed on node {failed.get('node')}:\n{failed.get('message', '')}"
                    )
                waiting_on = None  # its upload failed, or it went stale: claim the next attempt
            if waiting_on is None:
                attempt = last_failed + 1
                # Replacing a corrupt pack is claimed apart from the first build, which is done.
                claim_key = f"{self.prefix}claim-{attempt}" + (f"-replacing-{corrupt[:16]}" if corrupt else "")
                claim = {"node": self.request.node, "created_at": time.time()}
                if self.store.put_json(claim, claim_key, self.scratch, create=True):
                    say(f"{'replacing the corrupt pack' if corrupt else 'no pack'} of {self.request.key}: building it (attempt {attempt})")
                    self._build_and_upload(attempt, claim_key)
                    return "built (the stored pack was corrupt) and uploaded" if corrupt else "built and uploaded"
                waiting_on = claim_key
                holder = self.store.get_json(claim_key, self.scratch) or {}
                say(f"node {holder.get('node', '?')} is building {self.request.key}: waiting for its pack")
                if time.time() - float(holder.get("created_at", time.time())) > STALE_CLAIM_SECONDS:
                    say(f"its claim is older than {STALE_CLAIM_SECONDS} s: taking it for a dead builder")
                    self._record_failure(attempt, claim_key, "stale", "the builder's claim went stale")
                    continue
            if time.monotonic() - started > self.request.wait_seconds:
                say(f"no pack after {self.request.wait_seconds:.0f} s of waiting: building it here")
                self._build_and_upload(None, None)
                return "built after waiting in vain, and uploaded"
            time.sleep(self.request.poll_seconds)

    def _post_build_script(self) -> str | None:
        post_build = self.request.post_build
        if not post_build:
            return None
        if "text" in post_build:
            return post_build["text"]
        path = self.scratch / f".post-build-{os.getpid()}"
        try:
            if not self.store.get(post_build["key"], path) or file_sha256(path) != post_build["sha256"]:
                raise EnvironmentBuildError(f"the post_build script {post_build['key']} is missing, or its sha256 is not {post_build['sha256']}")
            return path.read_text()
        finally:
            path.unlink(missing_ok=True)

    def _record_failure(self, attempt: int, claim: str, kind: str, message: str) -> None:
        record = {"attempt": attempt, "claim": claim, "kind": kind, "node": self.request.node, "message": message[-8000:], "at": time.time()}
        try:
            self.store.put_json(record, self.prefix + "failed.json", self.scratch)
        except StoreError as e:
            say(f"could not record the failure in the store: {e}")

    def _build_and_upload(self, attempt: int | None, claim: str | None) -> None:
        """Build here, then pack and upload; a failure of attempt ``attempt`` (claimed with
        ``claim``) is recorded for the nodes waiting on it."""
        began = time.monotonic()
        try:
            tool = build(self.request, self.target, self._post_build_script())
        except EnvironmentBuildError as e:
            if attempt is not None and claim is not None:
                self._record_failure(attempt, claim, "build", str(e))
            shutil.rmtree(self.target, ignore_errors=True)
            raise
        say(f"built with {tool} in {time.monotonic() - began:.1f} s")
        (self.target / ".complete").touch()
        if self.prefix is None:
            return
        began = time.monotonic()
        pack_path = self.scratch / f"{self.request.key}.pack"
        try:
            sha256, size = pack(self.target, pack_path)
            object_key = f"{self.prefix}{sha256}.tar.zst"
            self.store.put(pack_path, object_key)
            manifest = {
                "object": object_key,
                "sha256": sha256,
                "size": size,
                "prefix": str(self.target),
                "python": self.request.python,
                "software": self.request.software,
                "built_by": self.request.node,
                "built_with": tool,
                "built_at": time.time(),
            }
            self.store.put_json(manifest, self.prefix + "manifest.json", self.scratch)
            say(f"packed ({size / 1e6:.1f} MB) and uploaded in {time.monotonic() - began:.1f} s")
        except (StoreError, OSError) as e:
            # The environment works here; other nodes build their own after waiting.
            say(f"uploading the pack failed ({e}); this node goes on with its own build")
            if attempt is not None and claim is not None:
                self._record_failure(attempt, claim, "upload", str(e))
        finally:
            pack_path.unlink(missing_ok=True)

    def _fetch(self, manifest: dict[str, Any]) -> None:
        """Download, check and unpack the pack ``manifest`` names (EnvironmentBuildError if corrupt)."""
        began = time.monotonic()
        download = self.scratch / f"{self.request.key}.download"
        try:
            if not self.store.get(str(manifest.get("object", "")), download):
                raise CorruptPackError(f"the pack {manifest.get('object')} named by the manifest is missing")
            actual = file_sha256(download)
            if actual != manifest.get("sha256"):
                raise CorruptPackError(f"the pack {manifest.get('object')} is corrupt (sha256 {actual}, expected {manifest.get('sha256')})")
            fetched = time.monotonic()
            shutil.rmtree(self.target, ignore_errors=True)
            try:
                links = unpack(download, self.target)
            except (tarfile.TarError, OSError, ValueError) as e:
                shutil.rmtree(self.target, ignore_errors=True)
                raise CorruptPackError(f"the pack {manifest.get('object')} could not be unpacked: {e}") from e
            relocate(self.target, str(manifest.get("prefix", self.target)), self.request.interpreter, links)
            (self.target / ".complete").touch()
            say(
                f"fetched the pack ({download.stat().st_size / 1e6:.1f} MB) in {fetched - began:.1f} s, "
                f"unpacked in {time.monotonic() - fetched:.1f} s"
            )
        finally:
            download.unlink(missing_ok=True)


def prepare_environment(request: EnvironmentRequest, store: StoreProgram) -> tuple[Path, str]:
    """Get ``request``'s environment onto this machine; its path and the path taken."""
    return Preparer(request, store).prepare()


class PlatformMismatchError(EnvironmentBuildError):
    """This machine cannot build packs for the nodes (another OS, architecture or Python)."""


def normalised_machine(machine: str | None = None) -> str:
    return environment_key("", "", machine).rsplit("-", 1)[1]


# -- the client: the trust anchor of packs ----------------------------------------------------
def _machines_keys(software: Any, machines: list[str] | tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(environment_key(software.env_hash, software.python, m) for m in machines))


def read_pins(store: Any, software: Any, machines: list[str] | tuple[str, ...], scratch: Path) -> dict[str, dict[str, Any]]:
    """The client's pins of ``software``'s packs for ``machines`` (architectures), by
    environment key: what a node may fetch instead of building. ``store`` is the client's access
    to the artifact store (anything with the store program's ``get``: a :class:`StoreProgram`
    of the node store run with the client's credentials, see :func:`client_store`)."""
    pins = {}
    for key in _machines_keys(software, machines):
        pin = get_json(store, pin_key(key), scratch)
        if valid_pin(pin):
            assert pin is not None
            pins[key] = {"object": pin["object"], "sha256": pin["sha256"], "prefix": pin.get("prefix", "")}
    return pins


def record_built_packs(store: Any, software: Any, build_id: str, machines: list[str] | tuple[str, ...], scratch: Path) -> list[str]:
    """Pin the packs that build ``build_id`` (one cluster's nodes, or this client) uploaded, so
    that later clusters' nodes fetch them; the environment keys pinned.

    Called by the client that started the build: for a cluster, once its scheduler answers
    and before the cluster is handed to the user (before any user code runs on its nodes, which
    may write their build's prefix). A manifest that names a pack outside the build's prefix
    is ignored."""
    recorded = []
    for key in _machines_keys(software, machines):
        prefix = build_prefix(key, build_id)
        manifest = get_json(store, prefix + "manifest.json", scratch)
        if not valid_pin(manifest) or not str(manifest["object"]).startswith(prefix):  # type: ignore[index]
            continue
        assert manifest is not None
        pin = {
            "object": manifest["object"],
            "sha256": manifest["sha256"],
            "size": manifest.get("size"),
            "prefix": str(manifest.get("prefix", "")),
            "software": software.name,
            "build_id": build_id,
            "built_by": manifest.get("built_by"),
            "pinned_at": time.time(),
        }
        put_json(store, pin, pin_key(key), scratch)
        recorded.append(key)
    return recorded


@contextlib.contextmanager
def client_store(store: Any) -> Iterator[tuple[StoreProgram, Path]]:
    """The backend's store program (``store``, a :class:`~coiled_core.node.bootstrap.NodeStore`)
    run on the client with this Python and this user's credentials, and a scratch directory."""
    base = Path(os.path.expanduser("~/.cache/coiled/builds"))
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as work:
        program = Path(work) / "store.py"
        program.write_text(store.program)
        yield StoreProgram(program, env=dict(os.environ, COILED_STORE=json.dumps(store.settings))), Path(work)


def pinned_software(software: Any, store: Any, machines: list[str] | tuple[str, ...], scratch: Path | None = None) -> Any:
    """``software`` (a :class:`~coiled_core.node.bootstrap.BootSoftware`) for a new cluster:
    with the client's pins of its packs and a fresh build id. ``store`` is the client's access
    to the store (see :func:`read_pins`), or a ``NodeStore`` to run with :func:`client_store`."""
    import dataclasses

    if software.container:
        return software
    if hasattr(store, "program"):
        with client_store(store) as (runner, work):
            return pinned_software(software, runner, machines, work)
    pins = read_pins(store, software, machines, scratch or Path(tempfile.gettempdir()))
    return dataclasses.replace(software, pins=pins, build_id=new_build_id())


def record_cluster_packs(software: Any, store: Any, machines: list[str] | tuple[str, ...], scratch: Path | None = None) -> list[str]:
    """:func:`record_built_packs` of ``software``'s build (its ``build_id``); ``store`` as for
    :func:`pinned_software`."""
    if software.container or not software.build_id:
        return []
    if hasattr(store, "program"):
        with client_store(store) as (runner, work):
            return record_cluster_packs(software, runner, machines, work)
    return record_built_packs(store, software, software.build_id, machines, scratch or Path(tempfile.gettempdir()))


def build_environment_pack(software: Any, store: Any, machine: str = "x86_64", force: bool = False) -> str:
    """Build ``software``'s pack on this machine (the client), upload it and pin it, for nodes of
    architecture ``machine`` to fetch: ``coiled env build``.

    ``software`` is a :class:`~coiled_core.node.bootstrap.BootSoftware` and ``store`` the
    backend's :class:`~coiled_core.node.bootstrap.NodeStore`; the store program runs with this
    Python and this user's credentials. A pack is only usable on machines like the one that
    built it, so this machine must run Linux on ``machine`` with the environment's Python.

    Returns a line for the user. Raises :class:`PlatformMismatchError` (this machine cannot
    build for the nodes) or :class:`EnvironmentBuildError` (the build failed, with its output).
    """
    mine = f"{sys.platform} {normalised_machine()} Python {'%d.%d' % sys.version_info[:2]}"
    wanted = f"linux {normalised_machine(machine)} Python {software.python}"
    if mine != wanted:
        raise PlatformMismatchError(
            f"software environment {software.name!r} is for {wanted} machines, and this one is {mine}: build it on such a "
            "machine, or let the first cluster that needs it build it (its nodes share the pack)"
        )
    if software.container:
        raise PlatformMismatchError(f"software environment {software.name!r} is a container image: nodes pull it, there is nothing to build")
    uv = shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable)) or ""
    with client_store(store) as (runner, work):
        post_build = software.post_build
        request = EnvironmentRequest(
            software=software.name,
            env_hash=software.env_hash,
            python=software.python,
            requirements=list(software.requirements),
            post_build=(
                {"text": post_build} if isinstance(post_build, str) else {"key": post_build.key, "sha256": post_build.sha256} if post_build else None
            ),
            interpreter=getattr(sys, "_base_executable", sys.executable),
            uv=uv,
            cache=work / "envs",
            node=f"client {socket.gethostname()}",
            build_id=f"client-{new_build_id()}",
        )
        request.cache.mkdir()
        pin = read_pins(runner, software, [machine], work).get(request.key)
        if pin is not None and not force:
            size = (get_json(runner, pin_key(request.key), work) or {}).get("size") or 0
            return f"software environment {software.name!r} is already built ({request.key}, {size / 1e6:.0f} MB)"
        Preparer(request, runner)._build_and_upload(None, None)
        if request.key not in record_built_packs(runner, software, request.build_id, [machine], work):
            raise EnvironmentBuildError(f"software environment {software.name!r} was built, but uploading its pack failed (see above)")
        size = (get_json(runner, pin_key(request.key), work) or {}).get("size") or 0
        return f"built software environment {software.name!r} ({request.key}, {size / 1e6:.0f} MB) and uploaded it"


def _request(args: argparse.Namespace) -> EnvironmentRequest:
    with open(args.environment) as f:
        spec = json.load(f)
    return EnvironmentRequest(
        software=spec["software"],
        env_hash=spec["env_hash"],
        python=spec["python"],
        requirements=list(spec.get("requirements") or []),
        post_build=spec.get("post_build"),
        interpreter=args.interpreter,
        uv=args.uv or "",
        cache=Path(args.cache),
        wait_seconds=float(spec.get("wait_seconds", DEFAULT_WAIT_SECONDS)),
        pins=dict(spec.get("pins") or {}),
        build_id=str(spec.get("build_id") or ""),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coiled_core.node.envpack", description=__doc__.splitlines()[0])
    parser.add_argument("environment", help="the environment.json the boot script wrote")
    parser.add_argument("--interpreter", required=True, help="this machine's Python of the environment's major.minor")
    parser.add_argument("--uv", default="", help="uv's path (empty: pip)")
    parser.add_argument("--cache", required=True, help="where environments live on this machine")
    parser.add_argument("--store", required=True, help="the backend's store program")
    parser.add_argument("--result", required=True, help="file to write the environment's path to")
    args = parser.parse_args(argv)
    began = time.monotonic()
    request = _request(args)
    try:
        env, how = prepare_environment(request, StoreProgram(args.store))
    except (EnvironmentBuildError, StoreError) as e:
        say(str(e))
        return 1
    say(f"{request.software} ready ({how}) in {time.monotonic() - began:.1f} s")
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(os.path.abspath(args.result)), delete=False) as f:
        f.write(str(env))
    os.replace(f.name, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
