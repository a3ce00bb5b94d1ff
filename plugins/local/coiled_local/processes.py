"""Process helpers of the local backend: state directories, launching and stopping node agents.

Each cluster has a directory ``<root>/<name>/`` holding ``node.json`` (the node agent's config),
``agent.json`` (what the agent reports) and ``agent.log`` (everything its processes print). The
process table is the source of truth for liveness: a cluster is live only while its agent process
exists and is the agent of that directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from coiled_core import config
from coiled_core.errors import ProvisionError
from coiled_core.node.agent import STATE_FILE
from coiled_core.records import ClusterRecord, ClusterState, WorkerRecord

from coiled_local.options import LocalOptions

CONFIG_FILE = "node.json"
LOG_FILE = "agent.log"


def state_root(options: LocalOptions) -> Path:
    """Directory holding one sub-directory per cluster."""
    configured = options.directory or config.get("local.directory")
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
    """The live agent process of ``directory``, or None (also guards against a reused pid)."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if str(directory / CONFIG_FILE) in proc.cmdline():
            return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
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


def launch_agent(
    directory: Path, node_config: dict[str, Any], environ: dict[str, str], python: str = sys.executable
) -> subprocess.Popen:
    """Start a detached node agent: its own session, so it outlives the creating process."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    config_path = directory / CONFIG_FILE
    # May hold private keys: readable by this user only, from its creation on.
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(node_config, f, indent=1)
    with open(directory / LOG_FILE, "ab") as log:
        return subprocess.Popen(
            [python, "-m", "coiled_core.node", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **environ},
            cwd=directory,
            start_new_session=True,
            close_fds=True,
        )


def wait_for_scheduler(directory: Path, process: subprocess.Popen, deadline: float) -> dict[str, Any]:
    """Wait until the agent reports its scheduler address; raise with the log tail if it dies."""
    while True:
        state = read_json(directory / STATE_FILE)
        if state and state.get("state") == "error":
            # The scheduler starts first: with its address known, it was the workers that failed.
            what = "the workers failed to start" if state.get("scheduler_address") else "the scheduler failed to start"
            raise ProvisionError(f"{what}:\n{log_tail(directory, 60)}")
        if state and state.get("scheduler_address"):
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


def stop_agent(directory: Path, pid: int | None, grace: float = 20.0) -> None:
    """Stop an agent gracefully (SIGTERM), then kill its whole session if it lingers."""
    proc = agent_process(directory, pid)
    if proc is None:
        return
    try:
        children = proc.children(recursive=True)
        proc.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        return
    alive = [] if _wait_until_exited(proc, grace) else [proc]
    # The agent's session holds every process it forked; none may outlive it.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in [*alive, *children]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    for p in [proc, *children]:
        _wait_until_exited(p, 5)
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
    except ChildProcessError:
        pass


def record_from_directory(name: str, directory: Path) -> ClusterRecord | None:
    """Rebuild a cluster's record from the process table and what its agent wrote."""
    state = read_json(directory / STATE_FILE)
    if state is None:
        return None
    alive = agent_process(directory, state.get("pid")) is not None
    reported = state.get("state") or "starting"
    if alive:
        cluster_state = ClusterState(reported) if reported in ClusterState.__members__ else ClusterState.starting
        if cluster_state is ClusterState.stopped:
            cluster_state = ClusterState.stopping
    else:
        cluster_state = ClusterState.error if reported == "error" else ClusterState.stopped
    report = state.get("report") or {}
    return ClusterRecord(
        name=name,
        backend="local",
        state=cluster_state,
        scheduler_address=state.get("scheduler_address"),
        dashboard_url=state.get("dashboard_url"),
        workers=[WorkerRecord(name=w["name"], backend_ids={"pid": w.get("pid")}) for w in state.get("workers", [])],
        created_at=report.get("created_at") or state.get("started_at"),
        spec=report.get("spec") or {},
        backend_ids={"pid": state.get("pid"), "directory": str(directory)},
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
    claims.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        try:
            os.mkdir(claims / name)
        except FileExistsError:
            if not claim_is_stale(options, name):
                return False
            release_claim(options, name)
            continue
        me = psutil.Process()
        (claims / name / "owner.json").write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))
        return True
    return False


def mark_claim_provisioned(options: LocalOptions, name: str) -> None:
    directory = claim_dir(options, name)
    if directory.is_dir():
        (directory / "provisioned").touch()


def stray_processes(directory: Path) -> list[psutil.Process]:
    """Processes still referring to a cluster directory (e.g. workers whose agent died)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = proc.info["cmdline"] or []
        if any(str(directory) in arg for arg in cmdline) or proc.info["cwd"] == str(directory):
            found.append(proc)
    return found
