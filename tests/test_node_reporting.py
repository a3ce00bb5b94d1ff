"""The node agent's own files: its report survives a failing disk, its log is rotated."""

from __future__ import annotations

import os
import stat

from coiled_core.node.agent import NodeAgent, rotate_log
from coiled_core.node.config import NodeConfig, SchedulerSettings


def test_a_report_that_cannot_be_written_does_not_stop_the_node(tmp_path):
    agent = NodeAgent(NodeConfig(cluster_name="c", role="scheduler", scheduler=SchedulerSettings(), state_dir=str(tmp_path / "gone")))
    agent.write_state()  # the directory does not exist (as good as a full disk): no exception
    agent.state_dir = str(tmp_path)
    agent.write_state()
    report = tmp_path / "agent.json"
    assert stat.S_IMODE(report.stat().st_mode) == 0o600  # it holds the cluster's environ
    assert [p.name for p in tmp_path.iterdir()] == ["agent.json"]  # no temporary file left


def test_the_log_is_rotated_in_place_and_writers_go_on(tmp_path):
    log = tmp_path / "agent.log"
    # Every process of a node writes through a descriptor opened for appending, as here.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"old line\n" * 100)
        assert not rotate_log(str(log), max_bytes=10_000)
        assert rotate_log(str(log), max_bytes=100)
        os.write(fd, b"new line\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"new line\n"
    rotated = tmp_path / "agent.log.1"
    assert rotated.read_bytes() == b"old line\n" * 100
    assert stat.S_IMODE(rotated.stat().st_mode) == 0o600
    assert not rotate_log(str(tmp_path / "missing.log"), max_bytes=1)
