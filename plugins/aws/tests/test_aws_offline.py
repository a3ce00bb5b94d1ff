"""Offline EC2: moto on 127.0.0.1 plus a runner that boots user data as local processes."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from botocore.exceptions import ClientError
from coiled_aws.offline import (
    ERROR_TAG,
    RUNNER_ENV,
    Credentials,
    OfflineEC2,
    default_max_instances,
    loopback_address,
)

pytestmark = pytest.mark.timeout(60)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def state(ec2: Any, instance_id: str) -> str:
    reply = ec2.describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0]["State"]["Name"]


def run(ec2: Any, script: str, count: int = 1) -> list[dict[str, Any]]:
    image = ec2.describe_images()["Images"][0]["ImageId"]
    reply = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=count, MaxCount=count, UserData=script)
    return reply["Instances"]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def marked_processes(runner_pid: int | None = None) -> list[psutil.Process]:
    """Live processes started by a runner in this test process (or in ``runner_pid``'s)."""
    prefix = f"{runner_pid or os.getpid()}:"
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(RUNNER_ENV, "").startswith(prefix) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="class")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineEC2]:
    """One simulated EC2 for the tests of a class, which do not mind each other's instances
    (moto's first calls after a reset take a second or two)."""
    with OfflineEC2(workdir=tmp_path_factory.mktemp("ec2"), poll_interval=0.1, kill_grace=1.0) as sim:
        yield sim


@pytest.fixture
def ec2(offline: OfflineEC2) -> Any:
    return offline.client("ec2")


def test_loopback_address() -> None:
    assert loopback_address("10.0.1.25") == "127.0.1.25"
    assert loopback_address("172.31.40.7") == "127.31.40.7"
    with pytest.raises(ValueError):
        loopback_address("fe80::1")
    assert default_max_instances() >= 8


class TestSharedCloud:
    """Boot, environment, termination and power-off on one simulated EC2."""

    def test_environ_and_endpoint(self, offline: OfflineEC2) -> None:
        env = offline.environ()
        assert env["AWS_ENDPOINT_URL"] == offline.endpoint_url
        assert offline.endpoint_url.startswith("http://127.0.0.1:")
        assert env["AWS_ACCESS_KEY_ID"] == offline.credentials.access_key_id
        assert env["AWS_SECRET_ACCESS_KEY"] == offline.credentials.secret_access_key
        assert len(offline.credentials.secret_access_key) >= 40 and offline.credentials.access_key_id != "testing"
        assert env["AWS_DEFAULT_REGION"] == "us-east-1"
        assert env["DASK_COILED__LOOPBACK_ADDRESSES"] == "true"
        with pytest.raises(RuntimeError, match="already runs"):
            OfflineEC2().start()

    def test_boot_env_and_termination(
        self, offline: OfflineEC2, ec2: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        out = tmp_path / "out"
        out.mkdir()
        monkeypatch.setenv("COILED_TEST_UNRELATED", "leaked")
        read_fd, write_fd = os.pipe()
        os.set_inheritable(write_fd, True)  # an inheritable descriptor the instances must not get
        fields = (
            "$COILED_INSTANCE_ID $COILED_NODE_HOST $COILED_PRIVATE_IP $COILED_OFFLINE"
            " ${COILED_TEST_UNRELATED:-unset} $AWS_ENDPOINT_URL $AWS_DEFAULT_REGION $COILED_ENV_CACHE $COILED_NODE_ROOT"
            f" $(test -e /proc/$$/fd/{write_fd} && echo fd-leaked || echo fd-closed)"
        )
        script = f'#!/bin/bash\necho "{fields}" >> {out}/"$COILED_INSTANCE_ID"\nsleep 1000\n'
        try:
            launched = run(ec2, script, count=2)
            ids = [i["InstanceId"] for i in launched]
            private = {i["InstanceId"]: i["PrivateIpAddress"] for i in launched}
            wait_for(lambda: all((out / i).exists() for i in ids), what="both boot scripts")
        finally:
            os.close(read_fd)
            os.close(write_fd)
        time.sleep(0.5)  # a second boot would show up as a second line by now

        for iid in ids:
            lines = (out / iid).read_text().splitlines()
            assert len(lines) == 1, lines  # booted exactly once
            got_id, host, ip, flag, unrelated, endpoint, region, cache, root, fd = lines[0].split()
            assert got_id == iid and ip == private[iid]
            assert host == loopback_address(ip) and host.startswith("127.")
            assert not host.startswith(("10.", "172."))
            assert (flag, unrelated, endpoint, region) == ("1", "unset", offline.endpoint_url, "us-east-1")
            assert cache == str(offline.env_cache) and Path(cache).is_dir()
            assert fd == "fd-closed"
            inst = offline.instances[iid]
            assert root == str(inst.directory) and inst.directory.name == iid
            assert inst.status == "running" and inst.node_host == host
            assert os.getsid(inst.pid) == inst.pid  # its own session

        victim, survivor = ids
        procs = {iid: [psutil.Process(offline.instances[iid].pid)] for iid in ids}
        for iid in ids:
            leader = procs[iid][0]
            procs[iid] += wait_for(lambda leader=leader: leader.children(), what="sleep child")
        ec2.terminate_instances(InstanceIds=[victim])
        wait_for(lambda: all(gone(p.pid) for p in procs[victim]), what="the terminated instance's processes to die")
        assert offline.instances[victim].status == "stopped"
        assert all(not gone(p.pid) for p in procs[survivor])
        assert state(ec2, survivor) == "running"
        assert offline.errors == []

    def test_power_off_terminates_instance(self, offline: OfflineEC2, ec2: Any) -> None:
        (plain,) = run(ec2, "#!/bin/sh\necho booted\nexit 3\n")
        # A script written for a real machine: leaves a daemon behind and calls shutdown.
        (daemon,) = run(ec2, "sleep 1000 &\necho $! > daemon.pid\nshutdown -h now\nsleep 1000\n")
        for iid in (plain["InstanceId"], daemon["InstanceId"]):
            wait_for(lambda iid=iid: state(ec2, iid) == "terminated", what="terminated after power-off")
        record = offline.instances[plain["InstanceId"]]
        assert record.status == "powered-off" and record.returncode == 3
        assert "booted" in record.log() and "powered off" in record.log()
        daemon_pid = int((offline.instances[daemon["InstanceId"]].directory / "daemon.pid").read_text())
        wait_for(lambda: gone(daemon_pid), what="the daemon left behind to be killed")

    def test_only_this_runs_credentials_get_an_instance_booted(self, offline: OfflineEC2, ec2: Any, tmp_path: Path) -> None:
        """Anyone on this machine can reach the port: a request not signed with this run's key
        is refused, and another account's instances never boot."""
        out = tmp_path / "out"
        out.mkdir()
        image = ec2.describe_images()["Images"][0]["ImageId"]

        def launch(client: Any, who: str) -> Any:
            return client.run_instances(
                ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData=f"touch {out}/{who}\n"
            )

        strangers = {
            "fixed-key": Credentials("123456789012", "testing", "testing"),
            "wrong-secret": Credentials(offline.credentials.account_id, offline.credentials.access_key_id, "x" * 40),
        }
        for who, credentials in strangers.items():
            with pytest.raises(ClientError) as refused:
                launch(offline.client("ec2", credentials=credentials), who)
            assert refused.value.response["Error"]["Code"] in ("InvalidClientTokenId", "SignatureDoesNotMatch")
        # Unsigned, naming this run's account, and moto's own API (which could turn auth off).
        query = urllib.parse.urlencode(
            {"Action": "RunInstances", "Version": "2016-11-15", "ImageId": image, "MinCount": 1, "MaxCount": 1,
             "UserData": base64.b64encode(f"touch {out}/unsigned\n".encode()).decode()}
        ).encode()
        forged = {"x-moto-account-id": offline.credentials.account_id, "Content-Type": "application/x-www-form-urlencoded"}
        for path, body in (("/", query), ("/moto-api/reset-auth", b"inf"), ("/moto-api/reset", b"")):
            request = urllib.request.Request(offline.endpoint_url + path, data=body, headers=forged, method="POST")
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(request, timeout=10)
            assert denied.value.code == 403
        # Another simulated account may use the API, but its instances are not this run's to boot.
        other = offline.add_account()
        (foreign,) = launch(offline.client("ec2", credentials=other), "other-account")["Instances"]
        # This run's own instance boots: the runner has looked at the API since the others tried.
        (own,) = launch(ec2, "own")["Instances"]
        wait_for(lambda: (out / "own").exists(), what="this run's instance to boot")
        assert sorted(p.name for p in out.iterdir()) == ["own"]
        assert foreign["InstanceId"] not in offline.instances
        reservations = ec2.describe_instances()["Reservations"]
        assert {r["OwnerId"] for r in reservations} == {offline.credentials.account_id}
        assert foreign["InstanceId"] not in {i["InstanceId"] for r in reservations for i in r["Instances"]}


def test_too_many_instances_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with OfflineEC2(workdir=tmp_path / "ec2", max_instances=1, poll_interval=0.1, kill_grace=1.0) as sim:
        ec2 = sim.client("ec2")
        ids = [i["InstanceId"] for i in run(ec2, f"touch {out}/$COILED_INSTANCE_ID\nsleep 1000\n", count=2)]
        refused = wait_for(lambda: [i for i in ids if state(ec2, i) == "terminated"], what="a refusal")
        assert len(refused) == 1
        (bad,) = refused
        (good,) = set(ids) - {bad}
        assert state(ec2, good) == "running"
        assert (out / good).exists() and not (out / bad).exists()
        assert len(sim.errors) == 1 and bad in sim.errors[0]
        assert "at most 1 simulated instances" in sim.errors[0] and "max_instances" in sim.errors[0]
        assert sim.instances[bad].status == "refused"
        assert "at most 1" in sim.instances[bad].log()
        tags = ec2.describe_instances(InstanceIds=[bad])["Reservations"][0]["Instances"][0]["Tags"]
        assert any(t["Key"] == ERROR_TAG and "at most 1" in t["Value"] for t in tags)


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    sim = OfflineEC2(workdir=tmp_path / "ec2", poll_interval=0.1, kill_grace=1.0).start()
    host, port = sim.endpoint_url.removeprefix("http://").split(":")
    ec2 = sim.client("ec2")
    # Each instance also starts a process in a session of its own, out of the instance's group.
    ids = [i["InstanceId"] for i in run(ec2, "setsid sleep 1000 &\nsleep 1000\n", count=2)]
    wait_for(lambda: len(marked_processes()) >= 6, what="the instances' processes")
    pids = [p.pid for p in marked_processes()]
    assert {sim.instances[i].pid for i in ids} <= set(pids)
    sim.stop()
    assert all(gone(pid) for pid in pids)
    assert marked_processes() == []
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()
    sim.stop()  # idempotent


def test_a_start_leaves_other_runs_processes_alone(tmp_path: Path) -> None:
    """A process marked by a runner that is gone is another run's: starting kills nothing."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    stranger = subprocess.Popen(["sleep", "1000"], env={**os.environ, RUNNER_ENV: f"{dead.pid}:0.000:x"})
    try:
        wait_for(lambda: marked_processes(dead.pid), what="the stranger's process")
        with OfflineEC2(workdir=tmp_path / "ec2", run_scripts=False):
            pass
        assert stranger.poll() is None, "a starting stand-in killed a process it did not start"
    finally:
        stranger.kill()
        stranger.wait()


_RUNNER = """
import sys, time
from coiled_aws.offline import OfflineEC2
sim = OfflineEC2(workdir=sys.argv[1], poll_interval=0.1, kill_grace=1.0).start()
ec2 = sim.client("ec2")
image = ec2.describe_images()["Images"][0]["ImageId"]
iid = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, UserData="sleep 1000")["Instances"][0]["InstanceId"]
while sim.instances.get(iid) is None or sim.instances[iid].pid is None:
    time.sleep(0.05)
print(sim.instances[iid].pid, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(120)
def test_the_instances_of_a_killed_runner_end_by_themselves_and_only_theirs(tmp_path: Path) -> None:
    """SIGKILL leaves a runner no chance to stop its instances: its watchdog ends them, and
    only them (a stranger's process carrying another marker lives on)."""
    runner = subprocess.Popen([sys.executable, "-c", _RUNNER, str(tmp_path / "ec2")], stdout=subprocess.PIPE, text=True)
    stranger = subprocess.Popen(["sleep", "1000"], env={**os.environ, RUNNER_ENV: f"{runner.pid}:0.000:other"})
    try:
        machine = int(runner.stdout.readline())
        runner.kill()
        runner.wait(10)
        wait_for(lambda: gone(machine), timeout=60, what="the killed runner's instance to end")
        assert stranger.poll() is None, "the watchdog killed a process of another marker"
    finally:
        for p in (runner, stranger):
            if p.poll() is None:
                p.kill()
                p.wait()
