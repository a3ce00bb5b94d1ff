"""A warm fork server, forked from the node agent before the agent starts any thread.

Nannies start their worker processes with multiprocessing. Forking the agent itself (method
``fork``) copies a process whose other threads may hold a lock at that instant: most often the
lock of a module that the agent's event loop is importing lazily, and a worker that then imports
that module waits for ever, before it registers. Python's own remedy, method ``forkserver``,
starts a fresh interpreter that must import distributed again (half a second of CPU or more, on
the critical path of every node).

This module keeps both the speed and the safety: while the agent is still single-threaded and
has imported what workers need, it forks one copy of itself that runs multiprocessing's fork
server loop, and installs that copy as the running fork server. Every worker process is then
forked from a quiet, already warm process. (Forking the copy earlier, to import in parallel with
the agent, measured slower on two cores: the two imports compete for them.) If the copy dies, multiprocessing starts a standard
fork server in its place, so workers can still start.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing import forkserver, resource_tracker


@dataclass
class WarmForkServer:
    """The fork server this agent started: its process and the private directory of its socket."""

    pid: int
    directory: str

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the server to exit (it does once every process it forked has exited) and clean up.

        Waits at most ``timeout`` seconds: a worker that is stuck must not keep the agent alive.
        """
        server = forkserver._forkserver
        if server._forkserver_pid == self.pid and server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
            server._forkserver_alive_fd = None
            server._forkserver_pid = None
            server._forkserver_address = None
        deadline = time.monotonic() + timeout
        while True:
            try:
                finished, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if finished or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        shutil.rmtree(self.directory, ignore_errors=True)


#: A Unix socket's path must be shorter than this (108 bytes on Linux, less elsewhere).
_MAX_SOCKET_PATH = 100


def _private_directory(parent: str | None) -> str:
    """A new directory only this user can enter, short enough to hold the server's socket."""
    for base in (parent, None, "/tmp"):
        if base is not None and not os.path.isdir(base):
            continue
        directory = tempfile.mkdtemp(prefix="coiled-fs-", dir=base)
        if len(os.path.join(directory, "fs")) < _MAX_SOCKET_PATH:
            return directory
        os.rmdir(directory)
    raise OSError("no directory has a path short enough for the fork server's socket")


def start_warm_fork_server(parent: str | None = None) -> WarmForkServer | None:
    """Fork the fork server from this process, now; ``None`` if this process already has threads.

    Call it after importing what worker processes need and before starting any thread, and set
    ``distributed.worker.multiprocessing-method`` to ``forkserver`` so that nannies use it. Its
    socket goes in a new private directory under ``parent`` (the node's state directory, which
    its backend cleans up), or under the temporary directory.
    """
    if threading.active_count() != 1:
        # Forking now is exactly what this module avoids; multiprocessing will start a standard
        # (cold, but safe) fork server when the first worker starts.
        return None
    # Every process start through a fork server needs multiprocessing's resource tracker, a
    # small fresh interpreter: start it now, in parallel with the agent's own start.
    resource_tracker.ensure_running()
    # The socket lives in a directory only this user can enter: whoever can connect to a fork
    # server can run code as this user.
    directory = _private_directory(parent)
    address = os.path.join(directory, "fs")
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(address)
        os.chmod(address, 0o600)
        listener.listen()
        # Every process that may ask for a fork holds the write end; EOF tells the server to exit.
        alive_r, alive_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the fork server
            code = 1
            try:
                os.close(alive_w)
                forkserver.main(listener.fileno(), alive_r, preload=[])
                code = 0
            except SystemExit:
                code = 0
            finally:
                # The server outlives an agent that was killed (it exits once that agent's
                # workers have): it removes its socket itself.
                shutil.rmtree(directory, ignore_errors=True)
                os._exit(code)
        os.close(alive_r)
    except BaseException:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    listener.close()
    server = forkserver._forkserver
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
    return WarmForkServer(pid=pid, directory=directory)
