"""The ``coiled`` command, through click's CliRunner and as the installed script, on real local clusters."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from coiled_core import cli
from coiled_core.records import ClusterState
from coiled_core.testing import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
COILED_SCRIPT = os.path.join(os.path.dirname(sys.executable), "coiled")
from local_clusters import (  # noqa: E402
    delete_quietly,
    reaping,
    record_of,
    running,
    start_detached,
    unique,
)


def invoke(*args: str, code: int = 0):
    result = CliRunner().invoke(cli.cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result


def assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def live_cluster():
    name = unique("cli-live")
    try:
        yield start_detached(name)
    finally:
        delete_quietly(name)


def test_help_lists_the_commands():
    out = invoke("--help").stdout
    assert "cluster" in out and "backends" in out
    out = invoke("cluster", "--help").stdout
    for command in ("list", "stop", "logs", "gc"):
        assert command in out


def test_cluster_list_shows_a_running_cluster(live_cluster):
    record = record_of(live_cluster)
    out = invoke("cluster", "list").stdout
    (row,) = [line for line in out.splitlines() if live_cluster in line]
    for column in ("name", "backend", "state", "workers", "dashboard", "created"):
        assert column in out
    assert "local" in row and "running" in row and record.dashboard_url in row
    assert record.created_at.astimezone().strftime("%Y-%m-%d %H:%M") in row
    # The same through --backend and an explicit --option.
    assert live_cluster in invoke("cluster", "list", "--backend", "local", "--option", "host=127.0.0.1").stdout


def test_cluster_list_with_an_empty_directory(tmp_path, live_cluster):
    out = invoke("cluster", "list", "-o", f"directory={tmp_path}").stdout
    assert "No clusters on backend 'local'" in out and live_cluster not in out


def test_option_values_are_yaml_scalars(monkeypatch):
    seen = {}

    def fake_list_clusters(backend=None, backend_options=None):
        seen.update(backend=backend, backend_options=backend_options)
        return []

    monkeypatch.setattr(cli.api, "list_clusters", fake_list_clusters)
    invoke(
        "cluster", "list", "--backend", "local",
        "-o", "n=3", "-o", "ratio=0.5", "-o", "flag=true", "-o", "text=hello world",
        "-o", 'quoted="7"', "-o", "empty=", "-o", "path=/tmp/a=b", "-o", "listy=[1, 2]", "-o", "day=2024-01-01",
        "-o", "n=4",
    )  # fmt: skip
    assert seen["backend"] == "local"
    assert seen["backend_options"] == {
        "n": 4,
        "ratio": 0.5,
        "flag": True,
        "text": "hello world",
        "quoted": "7",
        "empty": None,
        "path": "/tmp/a=b",
        "listy": "[1, 2]",
        "day": "2024-01-01",
    }
    # Without --option the configured defaults apply (None reaches the API).
    invoke("cluster", "list")
    assert seen == {"backend": None, "backend_options": None}


def test_cluster_logs(live_cluster):
    out = invoke("cluster", "logs", live_cluster).stdout
    assert "Scheduler" in out
    assert out.splitlines()[0] == "==> node <=="  # one section per process, headed by its name
    lines = invoke("cluster", "logs", live_cluster, "--tail", "3").stdout.splitlines()
    assert lines[0] == "==> node <=="
    assert 0 < len(lines[1:]) <= 3
    assert "Traceback" not in "\n".join(lines)


def test_errors_are_one_line(live_cluster):
    typo = live_cluster[:-1] + ("x" if live_cluster[-1] != "x" else "y")
    runner = CliRunner()
    assert_one_line_error(runner.invoke(cli.cli, ["cluster", "stop", typo]), repr(typo), f"did you mean {live_cluster!r}")
    assert_one_line_error(runner.invoke(cli.cli, ["cluster", "logs", "no-such-cluster"]), "'no-such-cluster'")
    assert_one_line_error(runner.invoke(cli.cli, ["cluster", "stop", "../etc"]), "cluster names are")
    assert_one_line_error(runner.invoke(cli.cli, ["cluster", "list", "-o", "hots=1"]), "did you mean 'host'")
    assert_one_line_error(runner.invoke(cli.cli, ["cluster", "list", "-b", "nope"]), "'nope'", "'local'")
    # Usage mistakes too, with click's exit code 2.
    for args, word in [
        (["cluster", "stop"], "Missing argument"),
        (["cluster", "logs", live_cluster, "--tail", "0"], "--tail"),
        (["cluster", "list", "-o", "novalue"], "KEY=VALUE"),
        (["clusterr"], "No such command"),
        (["--bogus"], "--bogus"),
    ]:
        result = runner.invoke(cli.cli, args)
        assert_one_line_error(result, word)
        assert result.exit_code == 2
    # None of this touched the cluster.
    assert record_of(live_cluster).state == ClusterState.running


def test_backends_lists_local_and_broken_ones(tmp_path, monkeypatch):
    module = f"fake_broken_backend_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("raise ImportError(\"No module named 'fakecloud_sdk'\", name='fakecloud_sdk')\n")
    info = tmp_path / "fake_broken_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-broken-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[coiled_core.backends]\nfakebroken = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    out = invoke("backends").stdout
    (local,) = [line for line in out.splitlines() if line.startswith("local ")]
    assert "coiled-local" in local and "ok" in local
    broken = out[out.index("fakebroken") :]
    assert "fake-broken-dist" in broken and "fakecloud_sdk" in broken and "broken" in broken


def test_gc_after_an_agent_was_killed(live_cluster, state_root):
    name = unique("cli-gc")
    try:
        start_detached(name)
        directory = os.path.join(state_root, name)
        assert os.path.isdir(directory)
        agent = psutil.Process(record_of(name).backend_ids["pid"])
        agent.kill()
        agent.wait(timeout=30)
        wait_until(lambda: record_of(name).state != ClusterState.running, timeout=10, message="the agent's death")

        out = invoke("cluster", "gc").stdout
        assert any(repr(name) in line for line in out.splitlines()), out
        assert "Cleaned up" in out
        assert not os.path.exists(directory)
        # The live cluster was not touched.
        live = record_of(live_cluster)
        assert live.state == ClusterState.running and running(live.backend_ids["pid"])
        assert os.path.isdir(os.path.join(state_root, live_cluster))
        assert "Nothing to clean up on backend 'local'" in invoke("cluster", "gc").stdout
    finally:
        delete_quietly(name)


def test_installed_script_stops_a_cluster(state_root):
    assert os.access(COILED_SCRIPT, os.X_OK), f"{COILED_SCRIPT} is not installed (pip install -e .)"
    name = unique("cli-stop")
    try:
        start_detached(name)
        pid = record_of(name).backend_ids["pid"]
        assert running(pid)

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [COILED_SCRIPT, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
            )

        listed = run("cluster", "list")
        assert listed.returncode == 0, listed.stderr
        assert any(name in line and "running" in line for line in listed.stdout.splitlines())

        with reaping(pid):
            stopped = run("cluster", "stop", name)
        assert stopped.returncode == 0, stopped.stderr
        assert name in stopped.stdout and "stopped" in stopped.stdout
        assert not running(pid)
        assert record_of(name).state == ClusterState.stopped

        unknown = run("cluster", "stop", "no-such-cluster-here")
        assert unknown.returncode != 0
        assert "Traceback" not in unknown.stdout + unknown.stderr
        (line,) = unknown.stderr.strip().splitlines()
        assert line.startswith("Error: no cluster named 'no-such-cluster-here' on backend 'local'")
    finally:
        delete_quietly(name)
