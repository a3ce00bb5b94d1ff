"""The ``subprocess`` backend: each node (a scheduler, one per worker) is a detached local process running the node
agent on 127.0.0.1. A cluster lives in ``<directory>/<name>/``; docs/writing-a-backend.md walks through it."""

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
from pydantic import BaseModel, Field

from coiled_core.backend import HOOK_API_VERSION  # noqa: F401  (declared, or the core refuses this backend)
from coiled_core.backend import (  # the one module of the core that a backend imports from
    AddOnRef, ClaimLease, ClusterRecord, ClusterSpec, ClusterSpecError, ClusterState, ProvisionError, WorkerRecord,
    build_node_config, config_get, hookimpl, make_private_dirs, past_lifetime, read_report, worker_name_prefix)

# Our entry-point name (records carry it), where nodes bind, and the variable that marks our processes' environment.
BACKEND, HOST, TOKEN = "subprocess", "127.0.0.1", "COILED_SUBPROCESS_TOKEN"

class Options(BaseModel):  # the core refuses unknown keys itself
    directory: str = Field(default_factory=lambda: config_get("subprocess.directory") or "~/.cache/coiled/subprocess")

@hookimpl
def backend_options_model():
    return Options

@hookimpl
def preflight(spec, options):
    if spec.software or spec.container:
        raise ClusterSpecError("software, container: the subprocess backend runs nodes in this Python environment")

def _cdir(options, name: str) -> Path:
    return Path(options.directory).expanduser() / name

def _write_private(path: Path, text: str) -> None:  # secrets (TLS keys, environ in node.json): 0600
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)

def _agent(ndir: Path, token: str) -> psutil.Process | None:
    """The node's agent if it runs and is ours: the pid we started, with the node's mark and exact argument."""
    with contextlib.suppress(OSError, ValueError, KeyError, psutil.Error):
        proc = psutil.Process(int((ndir / "pid").read_text()))
        mine = proc.environ()[TOKEN] == f"{token}:{ndir.name}"  # the node's mark, set when it was launched
        if mine and proc.cmdline()[-2:] == ["coiled_core.node", str(ndir / "node.json")]:
            return proc

def _stop(cdir: Path, token: str, nodes: list[str]) -> None:
    """SIGTERM the nodes' agents; 15 s later SIGKILL all still marked as theirs (frozen ones, orphaned children)."""
    agents = [agent for node in nodes if (agent := _agent(cdir / node, token))]
    for agent in agents:
        with contextlib.suppress(psutil.NoSuchProcess):  # it may end by itself meanwhile
            agent.terminate()
    psutil.wait_procs(agents, timeout=15)
    marks = {f"{token}:{node}" for node in nodes}
    left = [p for p in psutil.process_iter(["environ"]) if (p.info["environ"] or {}).get(TOKEN) in marks]
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(left, timeout=5)

def _launch(ndir: Path, config, token: str, tls: dict | None) -> None:
    make_private_dirs(str(ndir))
    config.state_dir, config.log_file = str(ndir), str(ndir / "agent.log")  # log_file: the file it rotates
    if tls:  # the agent reads this file once and deletes it
        _write_private(ndir / "tls.json", json.dumps(tls))
        config.tls_file = str(ndir / "tls.json")
    _write_private(ndir / "node.json", config.to_json())
    with open(os.open(ndir / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:  # its stdout
        proc = subprocess.Popen(
            [sys.executable, "-m", "coiled_core.node", str(ndir / "node.json")], cwd=ndir, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**os.environ, TOKEN: f"{token}:{ndir.name}"})
    (ndir / "pid").write_text(str(proc.pid))

def _start_workers(cdir: Path, spec: ClusterSpec, token: str, address: str, count: int) -> None:
    tls, index = json.loads((cdir / "tls" / "worker.json").read_text()) if spec.security else None, 0
    while count > 0:
        name, index = f"{worker_name_prefix(spec.name)}{index}", index + 1
        with contextlib.suppress(FileExistsError):  # mkdir claims the name; node dirs outlive nodes: no reuse
            os.mkdir(cdir / name, 0o700)
            addon = AddOnRef("coiled_subprocess.node:NamedWorker", {"name": name})
            config = build_node_config(spec, "worker", scheduler_address=address, host=HOST, addon=addon)
            _launch(cdir / name, config, token, tls)
            count -= 1

def _lock(cdir: Path):  # for checking and changing the name's claim; a flock ends with its holder: never stale
    make_private_dirs(str(cdir))
    fcntl.flock(f := open(cdir / ".lock", "a"), fcntl.LOCK_EX)
    return f  # closing it (the end of the with block) unlocks

def _claim_stale(cdir: Path, live: bool) -> bool:
    """No live cluster holds the name, and the claim became one (ended since), expired or lost its holder."""
    lease = ClaimLease.from_json((cdir / "claim").read_text()) if (cdir / "claim").exists() else None
    return not live and (lease is None or lease.is_stale(False) or not psutil.pid_exists(lease.holder["pid"]))

@hookimpl
def claim_name(name, options):
    with _lock(cdir := _cdir(options, name)):
        record = describe(name, options)
        if stale := _claim_stale(cdir, record is not None and record.state.is_live):
            _write_private(cdir / "claim", ClaimLease.new().to_json())
        return stale

@hookimpl
def provision(spec, options, tls):
    cdir, deadline, token = _cdir(options, spec.name), time.monotonic() + spec.timeout, os.urandom(16).hex()
    for old in [p for p in cdir.iterdir() if p.is_dir()]:
        shutil.rmtree(old)  # the nodes and logs of an earlier cluster of this name
    meta = {"token": token, "created_at": time.time(), "spec": spec.model_dump(mode="json")}
    _write_private(cdir / "cluster.json", json.dumps(meta))
    if tls:  # kept for the workers scale starts later (the core keeps only the client's part)
        make_private_dirs(str(cdir / "tls"))
        _write_private(cdir / "tls" / "worker.json", json.dumps(tls.to_node_config("worker")))
    with socket.create_server((HOST, 0)) as probe:  # a free port, so workers can start alongside the scheduler
        port = probe.getsockname()[1]
    config = build_node_config(spec, "scheduler", host=HOST, scheduler_port=port)
    config.remove_on_end = [str(cdir / "tls")]  # when the cluster ends on its own (directories only)
    _launch(cdir / "scheduler", config, token, tls.to_node_config("scheduler") if tls else None)
    _start_workers(cdir, spec, token, f"{'tls' if tls else 'tcp'}://{HOST}:{port}", spec.n_workers)
    while not (report := read_report(str(cdir / "scheduler"))) or not report.scheduler_address:
        if (ended := _agent(cdir / "scheduler", token) is None) or time.monotonic() > deadline:
            _stop(cdir, token, os.listdir(cdir))
            step = "scheduler: its node ended" if ended else f"timeout: no scheduler after {spec.timeout:g}s"
            tail = logs(ClusterRecord(name=spec.name, backend=BACKEND), options, 30).get("scheduler", "")
            raise ProvisionError(f"{step}; the end of its log:\n{tail}")
        time.sleep(0.1)
    with _lock(cdir):  # from now on the cluster's own liveness decides whether the claim holds
        _write_private(cdir / "claim", ClaimLease.from_json((cdir / "claim").read_text()).provisioned().to_json())
    return describe(spec.name, options)

@hookimpl
def scale(record, options, n_workers, retired, tls):
    cdir, token = _cdir(options, record.name), record.backend_ids["token"]
    _stop(cdir, token, [name for name in retired if name in record.worker_names])  # names, never any path
    count = n_workers - len([w for w in describe(record.name, options).workers if w.name not in retired])
    _start_workers(cdir, ClusterSpec.model_validate(record.spec), token, record.scheduler_address, count)
    return describe(record.name, options)

@hookimpl
def describe(name, options):
    cdir = _cdir(options, name)
    with contextlib.suppress(OSError, ValueError):  # no cluster.json: no cluster (None)
        meta = json.loads((cdir / "cluster.json").read_text())
        report, live = read_report(str(cdir / "scheduler")), _agent(cdir / "scheduler", meta["token"]) is not None
        # Live only while the scheduler's agent runs (then its report says how far it got).
        state = ClusterState(report.state if report else "starting") if live else ClusterState.stopped
        workers = [  # only workers whose agent runs: an ended one is dropped (how a failed start is seen)
            WorkerRecord(name=p.name, backend_ids={"pid": agent.pid})
            for p in sorted(cdir.glob(worker_name_prefix(name) + "*")) if (agent := _agent(p, meta["token"]))]
        return ClusterRecord(
            name=name, backend=BACKEND, state=state, workers=workers, spec=meta["spec"], created_at=meta["created_at"],
            scheduler_address=report and report.scheduler_address, dashboard_url=report and report.dashboard_url,
            backend_ids={"token": meta["token"]})

@hookimpl
def teardown(record, options):
    cdir = _cdir(options, record.name)
    if found := describe(record.name, options):  # a bare record (failed start) has no token
        _stop(cdir, found.backend_ids["token"], os.listdir(cdir))
    for secret in [cdir / "claim", *cdir.glob("tls/*"), *cdir.glob("*/tls.json")]:
        secret.unlink(missing_ok=True)  # the claim too: the name is free again; logs stay
    return record.model_copy(update={"state": ClusterState.stopped, "workers": []})

@hookimpl
def list_clusters(options):
    return [r for p in sorted(_cdir(options, "").glob("*/cluster.json")) if (r := describe(p.parent.name, options))]

@hookimpl
def gc(options):
    deleted, root = [], _cdir(options, "")
    for cdir in sorted({p.parent for pattern in ("*/cluster.json", "*/claim") for p in root.glob(pattern)}):  # ours
        with _lock(cdir):  # nobody claims the name while we decide
            record = describe(cdir.name, options)
            live = record is not None and record.state.is_live
            if (live and not past_lifetime(record)) or (not live and not _claim_stale(cdir, False)):
                continue  # running within its lifetime, or being created (a live claim)
            teardown(record or ClusterRecord(name=cdir.name, backend=BACKEND), options)
            shutil.rmtree(cdir)
        deleted.append(f"{cdir.name}: deleted ({record.state.value if record else 'stale claim'})")
    return deleted

@hookimpl
def logs(record, options, tail):
    cdir = _cdir(options, record.name)  # logs stay after teardown, until gc deletes the cluster's directory
    lines = {p.parent.name: p.read_text(errors="replace").splitlines() for p in cdir.glob("*/agent.log")}
    return {name: "\n".join(text[-tail:] if tail else text) for name, text in sorted(lines.items())}
