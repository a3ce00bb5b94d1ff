"""The offline Compute Engine itself: the runner boots, kills and deletes; capacity; process
hygiene; the API's traps as the SDK sees them."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest
from coiled_gcp.options import GCPOptions
from coiled_gcp.session import GCP, OperationError

from coiled_core.testing import noderunner, wait_until


@pytest.fixture
def gcp(offline_gcp):
    yield GCP(GCPOptions())
    offline_gcp.clear_faults()


def _insert(gcp, name, script, zone="us-east1-b"):
    from google.cloud import compute_v1

    body = {
        "name": name,
        "machine_type": f"zones/{zone}/machineTypes/e2-standard-2",
        "labels": {"coiled-test": "offline"},
        "metadata": {"items": [{"key": "startup-script", "value": script}]},
        "network_interfaces": [{"network": "global/networks/default"}],
    }
    gcp.wait(gcp.instances.insert_unary(project=gcp.project, zone=zone, instance_resource=compute_v1.Instance(body)))


def _delete(gcp, name, zone="us-east1-b"):
    gcp.wait(gcp.instances.delete_unary(project=gcp.project, zone=zone, instance=name))


def test_a_script_runs_on_its_own_loopback_address_and_dies_with_its_instance(gcp, offline_gcp):
    _insert(gcp, "sleeper", 'echo "$COILED_INSTANCE_ID $COILED_NODE_HOST $COILED_OFFLINE" > me.txt; exec sleep 300')
    me = offline_gcp.workdir / "sleeper" / "me.txt"
    wait_until(lambda: me.exists() and me.read_text().strip(), 30, message="the script to run")
    name, host, offline = me.read_text().split()
    instance = gcp.instances.get(project=gcp.project, zone="us-east1-b", instance="sleeper")
    assert name == "sleeper" and offline == "1"
    assert host == "127." + instance.network_interfaces[0].network_i_p.split(".", 1)[1]
    assert isinstance(instance.id, int)  # an int64 sent as a JSON string
    pid = offline_gcp.machine_pid("sleeper")
    _delete(gcp, "sleeper")
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 30, message="the script to be killed")


def test_a_script_that_exits_deletes_its_instance(gcp, offline_gcp):
    _insert(gcp, "shortlived", "exit 0")
    wait_until(lambda: "shortlived" not in offline_gcp.instance_names(), 30, message="the instance to go")


def test_poweroff_deletes_the_instance(gcp, offline_gcp):
    _insert(gcp, "poweroff", "poweroff; sleep 300")
    wait_until(lambda: "poweroff" not in offline_gcp.instance_names(), 30, message="the instance to go")


def test_capacity_and_exhaustion_are_done_operations_with_errors(gcp, offline_gcp):
    offline_gcp.exhaust(zone="us-east1-c", code="QUOTA_EXCEEDED")
    with pytest.raises(OperationError) as info:
        _insert(gcp, "refused", "sleep 1", zone="us-east1-c")
    assert info.value.codes == ["QUOTA_EXCEEDED"] and info.value.status == 403
    assert "refused" not in offline_gcp.instance_names()


def test_an_injected_http_fault(gcp, offline_gcp):
    from google.api_core.exceptions import InternalServerError

    offline_gcp.fail("GET", r"/regions/us-east1$")
    with pytest.raises(InternalServerError):
        gcp.zones()
    assert gcp.zones() == ["us-east1-b", "us-east1-c", "us-east1-d"]


def test_requests_without_the_token_are_refused(offline_gcp):
    import requests

    reply = requests.get(f"{offline_gcp.endpoint}/compute/v1/projects/{offline_gcp.project}/regions/us-east1", timeout=10)
    assert reply.status_code == 401


def _marked_sleeper(marker):
    env = {**os.environ, noderunner.RUNNER_ENV: marker, noderunner.MACHINE_ENV: "someone-elses"}
    return subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)


def test_starting_a_stand_in_leaves_other_runs_machines_alone(tmp_path):
    # A machine whose marker names a runner that is gone is still none of this stand-in's
    # business: it did not start it (its own runner's watchdog ends it).
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True).stdout.strip()
    stranger = _marked_sleeper(f"{dead}:0.000:token")
    try:
        from coiled_gcp.offline import OfflineGCP

        with OfflineGCP(workdir=tmp_path / "gce", run_scripts=False):
            pass
        assert stranger.poll() is None, "a stand-in killed a process it did not start"
    finally:
        stranger.kill()
        stranger.wait(10)


_RUNNER = """
import sys, time
from coiled_gcp.offline import OfflineGCP
fake = OfflineGCP(workdir=sys.argv[1]).start()
body = {"name": "m", "machineType": "e2-small", "networkInterfaces": [{}],
        "metadata": {"items": [{"key": "startup-script", "value": "exec sleep 300"}]}}
fake.insert_instances("us-east1-b", [body], "insert")
print(fake.machine_pid("m"), flush=True)
time.sleep(600)
"""


def _runner(tmp_path, name):
    runner = subprocess.Popen([sys.executable, "-c", _RUNNER, str(tmp_path / name)], stdout=subprocess.PIPE, text=True)
    return runner, int(runner.stdout.readline())


def _ended(pid):
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_machines_of_a_killed_runner_end_by_themselves_and_only_theirs(tmp_path):
    first, first_machine = _runner(tmp_path, "first")
    second, second_machine = _runner(tmp_path, "second")
    try:
        first.kill()  # SIGKILL: no stop(), no clean-up of its own
        first.wait(10)
        wait_until(lambda: _ended(first_machine), 60, message="the killed runner's machine to end")
        assert not _ended(second_machine), "a live run's machine was killed"
        second.kill()
        second.wait(10)
        wait_until(lambda: _ended(second_machine), 60, message="the second runner's machine to end")
    finally:
        for runner in (first, second):
            if runner.poll() is None:
                runner.kill()
        for pid in (first_machine, second_machine):
            if not _ended(pid):
                os.kill(pid, 9)
