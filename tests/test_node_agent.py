"""The node agent as a cloud node would run it: separate scheduler and worker nodes.

A worker node may boot before its scheduler: its workers must retry until the scheduler answers,
and end when the scheduler ends, so that nothing outlives the cluster.
"""

import json
import socket
import subprocess
import sys
import time

import psutil
import pytest
from distributed import Client

from coiled_core.node.agent import STATE_FILE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(tmp_path, name: str, config: dict) -> subprocess.Popen:
    directory = tmp_path / name
    directory.mkdir()
    role = "combined" if "scheduler" in config and "workers" in config else ("scheduler" if "scheduler" in config else "worker")
    config = {"protocol": 1, "role": role, "cluster_name": "agent-test", "state_dir": str(directory), "host": "127.0.0.1", **config}
    path = directory / "node.json"
    path.write_text(json.dumps(config))
    log = open(directory / "agent.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "coiled_core.node", str(path)], stdout=log, stderr=subprocess.STDOUT)


def read_state(tmp_path, name: str) -> dict:
    try:
        return json.loads((tmp_path / name / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
        proc.wait(10)


def test_worker_node_booting_first_joins_and_ends_with_scheduler(tmp_path, processes):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    worker_node = start_agent(
        tmp_path,
        "worker-node",
        {
            "scheduler_address": address,
            "workers": {"class": "distributed.Nanny", "count": 1, "name_prefix": "agent-test-worker-", "nthreads": 1},
        },
    )
    processes.append(worker_node)
    time.sleep(1.0)  # the worker node is up and retrying before any scheduler exists
    assert worker_node.poll() is None

    scheduler_node = start_agent(
        tmp_path,
        "scheduler-node",
        {"scheduler": {"class": "distributed.Scheduler", "port": port, "options": {}}},
    )
    processes.append(scheduler_node)
    wait_for(lambda: read_state(tmp_path, "scheduler-node").get("state") == "running")
    assert read_state(tmp_path, "scheduler-node")["scheduler_address"] == address

    with Client(address, timeout=30) as client:
        client.wait_for_workers(1, timeout=60)
        assert list(w["name"] for w in client.scheduler_info()["workers"].values()) == ["agent-test-worker-0"]
        assert client.submit(lambda: 6 * 7).result() == 42

    # Ending the scheduler ends the worker node and every process it forked.
    worker_children = psutil.Process(worker_node.pid).children(recursive=True)
    scheduler_node.terminate()
    assert scheduler_node.wait(30) == 0
    assert worker_node.wait(60) is not None
    gone, alive = psutil.wait_procs(worker_children, timeout=30)
    assert not alive
    assert read_state(tmp_path, "scheduler-node")["state"] == "stopped"


def test_idle_timeout_ends_scheduler_node(tmp_path, processes):
    node = start_agent(
        tmp_path,
        "idle",
        {
            "scheduler": {"class": "distributed.Scheduler", "options": {"idle_timeout": 1}},
            "workers": {"class": "distributed.Nanny", "count": 1, "nthreads": 1},
        },
    )
    processes.append(node)
    assert node.wait(60) == 0
    assert read_state(tmp_path, "idle")["state"] == "stopped"


def test_bad_scheduler_class_reports_error(tmp_path, processes):
    node = start_agent(tmp_path, "bad", {"scheduler": {"class": "no_such_module.Scheduler", "options": {}}})
    processes.append(node)
    assert node.wait(60) == 1
    assert read_state(tmp_path, "bad")["state"] == "error"
    assert "no_such_module" in (tmp_path / "bad" / "agent.log").read_text()


def test_bad_worker_class_reports_error(tmp_path, processes):
    node = start_agent(
        tmp_path,
        "badworker",
        {
            "scheduler": {"class": "distributed.Scheduler", "options": {}},
            "workers": {"class": "no_such_module.Nanny", "count": 1, "nthreads": 1},
        },
    )
    processes.append(node)
    assert node.wait(60) == 1
    assert read_state(tmp_path, "badworker")["state"] == "error"
    assert "no_such_module" in (tmp_path / "badworker" / "agent.log").read_text()


# -- the node protocol ---------------------------------------------------------------------
def test_node_config_round_trips_through_json():
    from coiled_core.node.config import AddOnRef, NodeConfig, SchedulerSettings, WorkerSettings

    config = NodeConfig(
        cluster_name="c",
        role="combined",
        scheduler=SchedulerSettings(cls="distributed.Scheduler", options={"idle_timeout": 5}),
        workers=WorkerSettings(count=2, name_prefix="c-worker-", gpu_devices=["0"]),
        addon=AddOnRef("pkg.node:AddOn", {"bucket": "b"}),
        environ={"A": "1"},
    )
    text = config.to_json()
    assert json.loads(text)["scheduler"]["class"] == "distributed.Scheduler"  # the documented key
    assert json.loads(text)["protocol"] == 1
    assert NodeConfig.from_json(text) == config


def test_the_builder_includes_the_lifetime_rules_for_every_role():
    from coiled_core.node.config import build_node_config
    from coiled_core.spec import resolve_cluster_spec

    spec = resolve_cluster_spec({"name": "built", "n_workers": 3, "no_client_timeout": "7s", "cluster_timeout": "1h", "environ": {"X": "1"}})
    combined = build_node_config(spec, "combined")
    assert combined.workers.count == 3 and combined.scheduler.cls == spec.scheduler_class
    assert combined.lifecycle.no_client_timeout == 7 and combined.lifecycle.cluster_timeout == 3600
    worker = build_node_config(spec, "worker", scheduler_address="tls://10.0.0.1:8786", include_environ=False)
    assert worker.workers.count == 1 and worker.scheduler is None and worker.environ == {}
    assert worker.lifecycle.no_client_timeout == 7 and worker.workers.name_prefix == "built-worker-"
    with pytest.raises(ValueError, match="scheduler_address"):
        build_node_config(spec, "worker")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"protocol": 2}, "node protocol 2"),
        ({"protocol": None}, "node protocol"),
        ({"name_prefix": "x"}, "unknown key 'name_prefix'"),
        ({"workers": {"class": "distributed.Nanny", "names": ["a"]}}, r"node config.workers: unknown key 'names'"),
        ({"role": "both"}, "role"),
    ],
)
def test_the_agent_refuses_a_config_it_does_not_speak(tmp_path, change, message):
    config = {"protocol": 1, "role": "worker", "cluster_name": "c", "scheduler_address": "tcp://127.0.0.1:1",
              "workers": {"class": "distributed.Nanny", "count": 1}}
    config.update(change)
    if config["protocol"] is None:
        del config["protocol"]
    path = tmp_path / "node.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-m", "coiled_core.node", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot run this node" in result.stderr
    import re

    assert re.search(message, result.stderr), result.stderr
