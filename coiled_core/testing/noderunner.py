"""Generic pieces of an offline boot-script runner: a local process plays a cloud machine.

A cloud stand-in (an offline Compute Engine, EC2, ...) runs each machine's boot script with
:func:`start_machine`: in its own directory, session and process group, with ``COILED_OFFLINE=1``
and the ``COILED_*`` variables a real machine's metadata service would answer, and with shims
for ``poweroff``/``shutdown``/``halt`` that end the simulated machine instead of this one.

Every process started carries :data:`RUNNER_ENV` (``<runner pid>:<runner start time>:<token>``)
in its environment. :func:`kill_marked` ends every process of one runner (or one machine of it).

A runner never touches processes it did not start: other test runs on the same machine run
machines of their own. Machines of a runner that dies without cleaning up (a SIGKILLed test
run) are ended by that runner's own watchdog (:func:`start_watchdog`), a small detached process
that waits for the runner's process (its pid *and* start time, so a reused pid does not fool
it) to be gone and then ends the processes carrying exactly its runner's marker.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import shutil
import tempfile
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

#: Environment variable marking every process a runner started.
RUNNER_ENV = "COILED_OFFLINE_RUNNER"
#: Environment variable naming the simulated machine a process belongs to.
MACHINE_ENV = "COILED_INSTANCE_ID"
#: Variables copied from the runner's environment into each machine's, when set.
INHERIT_ENV: tuple[str, ...] = (
    "COILED_STANDIN",  # the proof that a stand-in runs (coiled_core.testing.standin)
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "PIP_CONFIG_FILE",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_CACHE_DIR",
    "UV_NATIVE_TLS",
    "UV_PYTHON_INSTALL_DIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)

_POWEROFF_SHIM = """#!/bin/sh
# Offline machine: power off this simulated machine, not the real one.
echo "offline: $(basename "$0") $*: powering off $COILED_INSTANCE_ID" >&2
: > "$COILED_INSTANCE_DIR/poweroff"
kill -TERM 0
"""


def new_marker() -> str:
    """A marker for this process's runner: its pid, its start time and a random token."""
    me = psutil.Process()
    return f"{me.pid}:{me.create_time():.3f}:{uuid.uuid4().hex}"


def prepare_bin(directory: Path) -> Path:
    """A directory for the front of a machine's ``PATH``: power-off shims and ``uv``."""
    directory.mkdir(parents=True, exist_ok=True)
    uv = shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable))
    if uv and not (directory / "uv").exists():
        (directory / "uv").symlink_to(uv)
    for name in ("poweroff", "shutdown", "halt"):
        shim = directory / name
        shim.write_text(_POWEROFF_SHIM)
        shim.chmod(0o755)
    return directory


def machine_environ(
    marker: str, machine_id: str, directory: Path, node_host: str, bin_dir: Path, extra: Mapping[str, str] = ()
) -> dict[str, str]:
    """The environment of one simulated machine's boot script."""
    env = {k: os.environ[k] for k in INHERIT_ENV if k in os.environ}
    env.update(dict(extra))
    env.update(
        {
            RUNNER_ENV: marker,
            "COILED_OFFLINE": "1",
            MACHINE_ENV: machine_id,
            "COILED_NODE_HOST": node_host,
            "COILED_INSTANCE_DIR": str(directory),
            "COILED_NODE_ROOT": str(directory),
            "TMPDIR": str(directory / "tmp"),
            "PATH": f"{bin_dir}:{env.get('PATH', os.defpath)}",
        }
    )
    return env


def start_machine(script: str, directory: Path, env: Mapping[str, str]) -> subprocess.Popen:
    """Run ``script`` as a simulated machine: in ``directory``, its own session, output in
    ``boot.log`` there. A ``#!`` script runs through its interpreter, anything else with bash."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tmp").mkdir(exist_ok=True)
    path = directory / "startup-script"
    path.write_text(script)
    path.chmod(0o700)
    command = [str(path)] if script.startswith("#!") else ["bash", str(path)]
    with open(directory / "boot.log", "ab") as log:
        return subprocess.Popen(
            command,
            cwd=directory,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def marked_processes(match: Callable[[str, Mapping[str, str]], bool]) -> list[psutil.Process]:
    """This user's live processes whose :data:`RUNNER_ENV` value and environment satisfy ``match``."""
    uid, me = os.getuid(), os.getpid()
    found = []
    for p in psutil.process_iter(["uids"]):
        try:
            if p.pid == me or p.info["uids"] is None or p.info["uids"].real != uid:
                continue
            env = p.environ()
            value = env.get(RUNNER_ENV)
            if value and match(value, env) and _alive(p):
                found.append(p)
        except (psutil.Error, OSError):
            pass
    return found


def kill_processes(procs: list[psutil.Process], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds for those still alive."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=2)


def kill_marked(marker: str, machine_id: str | None = None, grace: float = 3.0) -> int:
    """Kill every process of runner ``marker`` (of one machine only, with ``machine_id``)."""
    procs = marked_processes(lambda value, env: value == marker and (machine_id is None or env.get(MACHINE_ENV) == machine_id))
    kill_processes(procs, grace)
    return len(procs)


#: Where runs on this machine (any user's) lock the loopback blocks they use.
LOOPBACK_LOCKS = Path(tempfile.gettempdir()) / "coiled-offline-loopback"


class LoopbackBlock:
    """A ``127.B.0.0/16`` block of loopback addresses held by this run alone, for as long as it
    holds the block's lock (``flock``: released when the run ends, however it ends).

    Stand-ins hand out private addresses ``10.B.x.y`` (a simulated node binds ``127.B.x.y``), so
    two runs on one machine never give two nodes the same address and fixed ports (8786, 8787)
    never collide. ``candidates`` are the ``B`` values it may take, tried in random order.
    """

    def __init__(self, candidates: range | list[int]) -> None:
        LOOPBACK_LOCKS.mkdir(parents=True, exist_ok=True)
        try:
            LOOPBACK_LOCKS.chmod(0o1777)  # shared by every user, like /tmp
        except OSError:
            pass
        order = list(candidates)
        random.shuffle(order)
        for b in order:
            fd = self._lock(LOOPBACK_LOCKS / f"127.{b}.lock")
            if fd is not None:
                self.octet, self._fd = b, fd
                return
        raise RuntimeError(f"every loopback block 127.B.0.0/16 for B in {candidates} is in use by other runs")

    @staticmethod
    def _lock(path: Path) -> int | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None  # another user's lock file we may not open: theirs
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return None
            raise
        try:
            os.fchmod(fd, 0o666)
        except OSError:
            pass
        return fd

    def address(self, n: int) -> str:
        """The ``n``-th private address of the block (``1 <= n < 65535``): ``10.B.x.y``."""
        if not 0 < n < 65535:
            raise ValueError(f"address number {n} is outside the block")
        return f"10.{self.octet}.{n >> 8}.{n & 255}"

    def release(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None


def runner_alive(marker: str) -> bool:
    """Whether the process that made ``marker`` (:func:`new_marker`) still runs."""
    try:
        pid_text, created, _ = marker.split(":", 2)
        runner = psutil.Process(int(pid_text))
        return abs(runner.create_time() - float(created)) <= 0.01 and _alive(runner)
    except psutil.NoSuchProcess:
        return False
    except (ValueError, psutil.Error):
        return True  # not a marker of ours, or not ours to judge: assume alive


def start_watchdog(marker: str, grace: float = 3.0, interval: float = 0.5) -> subprocess.Popen:
    """Start the watchdog of runner ``marker``: once the runner's process is gone, it ends the
    processes carrying exactly ``marker`` (none of another runner's) and exits. The runner ends
    it when it stops (it has nothing left to do then)."""
    env = {k: v for k, v in os.environ.items() if k != RUNNER_ENV}
    command = [sys.executable, "-m", "coiled_core.testing.noderunner", "watch", marker, str(grace), str(interval)]
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def _watch(marker: str, grace: float, interval: float) -> int:
    while runner_alive(marker):
        time.sleep(interval)
    # Repeat: a machine may have forked while the first round was being killed.
    for _ in range(5):
        procs = marked_processes(lambda value, env: value == marker)
        if not procs:
            break
        kill_processes(procs, grace)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "watch":
        sys.exit(_watch(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
    sys.exit("usage: python -m coiled_core.testing.noderunner watch MARKER GRACE INTERVAL")
