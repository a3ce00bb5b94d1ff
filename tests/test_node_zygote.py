"""Worker processes are forked from a warm fork server made before the agent has threads.

Forking a process while another of its threads imports a module leaves the child holding that
module's import lock for ever; the node agent's event loop imports lazily all the time, so its
workers must not be forked from it directly. Each check runs in a fresh interpreter: the fork
server is process-wide state.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
from distributed import Client

import coiled


def run_python(code: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_children_start_while_another_thread_imports():
    """The hazard itself: a thread re-imports modules while children that import them start."""
    out = run_python(
        """
        import importlib, multiprocessing, os, sys, threading
        import psutil
        from coiled_core.node.zygote import start_warm_fork_server

        server = start_warm_fork_server()
        assert server is not None
        modules = ["csv", "decimal", "fractions", "statistics", "email.parser", "http.client"]
        stop = threading.Event()

        def churn():
            while not stop.is_set():
                for name in modules:
                    sys.modules.pop(name, None)
                    importlib.import_module(name)

        threading.Thread(target=churn, daemon=True).start()
        ctx = multiprocessing.get_context("forkserver")
        children = [ctx.Process(target=importlib.import_module, args=(m,)) for m in modules * 5]
        parents = set()
        for child in children:
            child.start()
            try:
                parents.add(psutil.Process(child.pid).ppid())
            except psutil.NoSuchProcess:
                pass
        for child in children:
            child.join(30)
        stop.set()
        codes = [child.exitcode for child in children]
        assert codes == [0] * len(children), codes
        # Every child came from the warm server, none from this (threaded) process.
        assert parents <= {server.pid}, (parents, server.pid)
        server.stop()
        assert not os.path.exists(server.directory)
        assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"
        print("ok", len(children))
        """
    )
    assert out.split() == ["ok", "30"]


def test_no_warm_server_once_threads_run():
    """Forking a threaded process is what the module avoids: it declines, multiprocessing falls back."""
    out = run_python(
        """
        import threading, time
        from coiled_core.node.zygote import start_warm_fork_server

        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        print(start_warm_fork_server())
        """
    )
    assert out.strip() == "None"


def test_cluster_workers_come_from_the_warm_server():
    with coiled.Cluster(n_workers=2, worker_cpu=1, worker_memory="1 GiB", wait_for_workers=True) as cluster:
        agent = psutil.Process(cluster.record.backend_ids["pid"])
        with Client(cluster) as client:
            worker_pids = set(client.run(lambda: __import__("os").getpid()).values())
        parents = {psutil.Process(pid).parent() for pid in worker_pids}
        assert len(parents) == 1
        (server,) = parents
        assert server.pid != agent.pid and server.ppid() == agent.pid
        # Its socket is in a private directory inside the cluster's own state directory.
        state_dir = Path(cluster.record.backend_ids["directory"])
        (socket_dir,) = state_dir.glob("coiled-fs-*")
        assert socket_dir.stat().st_mode & 0o777 == 0o700
    # The server ends with its agent, and removes its socket.
    psutil.wait_procs([server], timeout=30)
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
    assert not socket_dir.exists()
