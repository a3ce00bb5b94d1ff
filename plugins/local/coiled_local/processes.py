"""Process helpers of the local backend: state directories, launching and stopping node agents.

Each cluster has a directory ``<root>/<name>/`` holding ``node.json`` (the node agent's config),
``agent.json`` (what the agent reports) and ``agent.log`` (everything its processes print). The
process table is the source of truth for liveness: a cluster is live only while its agent process
exists and is the agent of that directory.

What is ours, exactly. The backend only ever deletes or kills what it can prove it made:

- A cluster directory is the backend's only if it holds the marker file ``.coiled-cluster``,
  written when the directory was created. gc deletes marked directories only, and creating a
  cluster over an existing unmarked directory is refused (a user's ``directory`` option may
  point anywhere).
- A cluster's processes are those whose environment carries the cluster's launch token
  (``COILED_LOCAL_LAUNCH``, a random value recorded in ``launch.json``): the agent and everything
  it forks or starts inherit it, and nothing else has it. Command lines and working directories
  are never used to pick processes to kill.
- The directory, its files and the logs are readable by this user only: they hold the cluster's
  ``environ`` and, briefly, its TLS keys (``tls.json``, which the agent deletes once read).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from coiled_core.backend import (
    AgentReport,
    ClusterRecord,
    ClusterState,
    NodeConfig,
    ProvisionError,
    WorkerRecord,
    config_get,
    make_private_dirs,
    read_report,
)

from coiled_local.options import LocalOptions

CONFIG_FILE = "node.json"
LOG_FILE = "agent.log"
#: Written when the backend creates a cluster directory: only marked directories are deleted.
MARKER_FILE = ".coiled-cluster"
#: The launch token the cluster's processes carry in their environment.
LAUNCH_FILE = "launch.json"
#: The node's TLS material, for the agent to read and delete at start.
TLS_FILE = "tls.json"
LAUNCH_VARIABLE = "COILED_LOCAL_LAUNCH"
#: The agent log is rotated (copied to agent.log.1, then emptied) past this size.
LOG_MAX_BYTES = 50 * 2**20


def state_root(options: LocalOptions) -> Path:
    """Directory holding one sub-directory per cluster."""
    configured = options.directory or config_get("local.directory")
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "coiled" / "local"


def cluster_dir(options: LocalOptions, name: str) -> Path:
    return state_root(options) / name


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def agent_process(directory: Path, pid: int | None) -> psutil.Process | None:
    """The live agent process of ``directory``, or None.

    It must be ``python -m coiled_core.node <directory>/node.json`` (that exact path as its
    last argument) and carry the cluster's launch token, so a reused pid, or a ``tail -f`` of a
    file in the directory, is never taken for it.
    """
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        cmdline = proc.cmdline()
        if cmdline[-3:] != ["-m", "coiled_core.node", str(directory / CONFIG_FILE)]:
            return None
        token = (read_json(directory / LAUNCH_FILE) or {}).get("token")
        if token and proc.environ().get(LAUNCH_VARIABLE) != token:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def log_tail(directory: Path, lines: int = 20) -> str:
    try:
        with open(directory / LOG_FILE, errors="replace") as f:
            return "".join(f.readlines()[-lines:]) if lines else f.read()
    except OSError:
        return ""


def detect_gpus() -> list[str]:
    """GPU device ids this machine exposes: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def is_marked(directory: Path) -> bool:
    """Whether ``directory`` is a cluster directory this backend created."""
    return (directory / MARKER_FILE).is_file() and not (directory / MARKER_FILE).is_symlink()


def _write_private(path: Path, data: str) -> None:
    """Create ``path`` readable by this user only from its first byte; it must not exist."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def prepare_directory(directory: Path, name: str) -> None:
    """A fresh, marked, owner-only directory for cluster ``name``.

    A directory left by an earlier cluster of this name (marked) is replaced; anything else at
    that path is refused, since it is not the backend's to delete.
    """
    if directory.is_symlink() or (directory.exists() and not is_marked(directory)):
        raise ProvisionError(
            f"{directory} exists and was not made by the local backend (it has no {MARKER_FILE} "
            "file), so it is left untouched; choose another cluster name or backend_options "
            "'directory', or move that directory away"
        )
    if directory.exists():
        for process in cluster_processes(directory):  # the earlier cluster's, should any be left
            _kill(process)
        shutil.rmtree(directory)
    make_private_dirs(str(directory.parent))
    directory.mkdir(mode=0o700)
    _write_private(directory / MARKER_FILE, json.dumps({"cluster": name, "created_at": time.time()}))


def launch_agent(
    directory: Path,
    node_config: NodeConfig,
    environ: dict[str, str],
    python: str = sys.executable,
    tls: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start a detached node agent: its own session, so it outlives the creating process.

    ``directory`` must have been made by :func:`prepare_directory`. ``tls`` (PEM strings) goes to
    a file of its own that the agent deletes once it has read it.
    """
    config_path = directory / CONFIG_FILE
    if tls:
        _write_private(directory / TLS_FILE, json.dumps(tls))
        node_config.tls_file = str(directory / TLS_FILE)
    node_config.state_dir = str(directory)
    node_config.log_file, node_config.log_max_bytes = str(directory / LOG_FILE), LOG_MAX_BYTES
    _write_private(config_path, node_config.to_json(indent=1))
    # Recorded before the agent exists, so its processes can always be found.
    token = secrets.token_hex(16)
    _write_private(directory / LAUNCH_FILE, json.dumps({"token": token}))
    log_fd = os.open(directory / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = subprocess.Popen(
            [python, "-m", "coiled_core.node", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env={**os.environ, **environ, LAUNCH_VARIABLE: token},
            cwd=directory,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(log_fd)
    return process


def wait_for_scheduler(directory: Path, process: subprocess.Popen, deadline: float) -> AgentReport:
    """Wait until the agent reports its scheduler address; raise with the log tail if it dies."""
    while True:
        state = read_report(str(directory))
        if state and state.state == "error":
            # The scheduler starts first: with its address known, it was the workers that failed.
            what = "the workers failed to start" if state.scheduler_address else "the scheduler failed to start"
            raise ProvisionError(f"{what}:\n{log_tail(directory, 60)}")
        if state and state.scheduler_address:
            return state
        if process.poll() is not None:
            raise ProvisionError(
                f"the node agent exited with code {process.returncode} before its scheduler started:\n"
                f"{log_tail(directory)}"
            )
        if time.monotonic() > deadline:
            raise ProvisionError(f"the scheduler did not start in time:\n{log_tail(directory)}")
        time.sleep(0.02)


def _wait_until_exited(proc: psutil.Process, timeout: float) -> bool:
    """Wait for ``proc`` to exit. A zombie has exited: only its parent (perhaps another,
    still running client process that created the cluster) can reap it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _kill(process: psutil.Process) -> None:
    try:
        process.kill()
    except psutil.NoSuchProcess:
        pass


def cluster_processes(directory: Path) -> list[psutil.Process]:
    """Every live process of the cluster in ``directory``: those carrying its launch token.

    The token is in the environment the agent was started with, which every process it forks
    or starts inherits; no other process has it, whatever its command line or working directory.
    """
    launch = read_json(directory / LAUNCH_FILE) or {}
    token = launch.get("token")
    if not token:
        return []
    found = []
    me = os.getuid()
    for proc in psutil.process_iter(["uids", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["uids"].real != me or proc.pid == os.getpid():
                continue
            if proc.environ().get(LAUNCH_VARIABLE) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_agent(directory: Path, pid: int | None, grace: float = 20.0) -> None:
    """Stop an agent gracefully (SIGTERM), then kill whatever of its cluster lingers."""
    proc = agent_process(directory, pid)
    if proc is not None:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
        _wait_until_exited(proc, grace)
    # Its workers, or processes their tasks started, must not outlive it.
    leftovers = cluster_processes(directory)
    for p in leftovers:
        _kill(p)
    for p in [*([proc] if proc is not None else []), *leftovers]:
        _wait_until_exited(p, 5)
    if pid:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
        except ChildProcessError:
            pass


def record_from_directory(name: str, directory: Path) -> ClusterRecord | None:
    """Rebuild a cluster's record from the process table and what its agent wrote."""
    state = read_report(str(directory))
    if state is None:
        return None
    alive = agent_process(directory, state.pid) is not None
    reported = state.state or "starting"
    if alive:
        cluster_state = ClusterState(reported) if reported in ClusterState.__members__ else ClusterState.starting
        if cluster_state is ClusterState.stopped:
            cluster_state = ClusterState.stopping
    else:
        cluster_state = ClusterState.error if reported == "error" else ClusterState.stopped
    report = state.report
    return ClusterRecord(
        name=name,
        backend="local",
        state=cluster_state,
        scheduler_address=state.scheduler_address,
        dashboard_url=state.dashboard_url,
        # A worker that has ended is no longer listed: that is how a failed worker is noticed.
        workers=[WorkerRecord(name=w.name, backend_ids={"pid": w.pid}) for w in state.workers] if alive else [],
        created_at=report.get("created_at") or state.started_at,
        spec=report.get("spec") or {},
        backend_ids={"pid": state.pid, "directory": str(directory)},
    )


# -- name claims ---------------------------------------------------------------------------
# A claim is a directory <root>/.claims/<name>, created with mkdir (atomic on every POSIX file
# system). It holds owner.json (the claiming process) and, once the agent runs, "provisioned".
CLAIMS_DIR = ".claims"
#: A claim with no owner file yet is being written; after this long it is abandoned.
UNFINISHED_CLAIM_SECONDS = 60.0


def claim_dir(options: LocalOptions, name: str) -> Path:
    return state_root(options) / CLAIMS_DIR / name


def _process_alive(pid: int | None, create_time: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - (create_time or 0)) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError, ValueError):
        return False


def claim_is_stale(options: LocalOptions, name: str) -> bool:
    """Whether the claim on ``name`` may be taken over: nobody is using or creating it."""
    directory = claim_dir(options, name)
    record = record_from_directory(name, cluster_dir(options, name))
    if record is not None and record.state.is_live:
        return False
    if (directory / "provisioned").exists():
        return True  # its cluster ran and has ended
    owner = read_json(directory / "owner.json")
    if owner is None:
        try:
            return time.time() - directory.stat().st_mtime > UNFINISHED_CLAIM_SECONDS
        except FileNotFoundError:
            return True
    return not _process_alive(owner.get("pid"), owner.get("create_time"))


def release_claim(options: LocalOptions, name: str) -> None:
    """Remove a claim; rename first so that two removers cannot both delete a fresh claim."""
    directory = claim_dir(options, name)
    doomed = directory.with_name(f".released-{name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(directory, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def claim(options: LocalOptions, name: str) -> bool:
    """Atomically claim ``name``; take over a stale claim. True if this process won it."""
    claims = state_root(options) / CLAIMS_DIR
    make_private_dirs(str(claims))
    for _ in range(5):
        try:
            os.mkdir(claims / name)
        except FileExistsError:
            if not claim_is_stale(options, name):
                return False
            release_claim(options, name)
            continue
        me = psutil.Process()
        _write_private(claims / name / "owner.json", json.dumps({"pid": me.pid, "create_time": me.create_time()}))
        return True
    return False


def mark_claim_provisioned(options: LocalOptions, name: str) -> None:
    directory = claim_dir(options, name)
    if directory.is_dir():
        (directory / "provisioned").touch()
