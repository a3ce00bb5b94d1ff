"""The AWS backend passes the contract suite, on the offline EC2 (moto plus the runner)."""

import os
import signal

import psutil
import pytest

from coiled_core.testing import BackendContract, wait_until

pytestmark = pytest.mark.usefixtures("offline_ec2")

OPTIONS = {"region": "us-east-1", "allow_ingress_from": "127.0.0.1/32"}


def _agents(simulator, instance_ids):
    """Node agent processes the runner started for these instances."""
    found = []
    for instance_id in instance_ids:
        instance = simulator.instances.get(instance_id)
        if instance is None or instance.pid is None:
            continue
        try:
            root = psutil.Process(instance.pid)
            for proc in [root, *root.children(recursive=True)]:
                if "coiled_core.node" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


class TestAWSContract(BackendContract):
    backend = "aws"
    backend_options = OPTIONS
    # One worker instance per cluster keeps the suite's clusters small on two cores (each simulated
    # instance is a whole node agent); the scaling and adaptive tests still run several.
    cluster_kwargs = {"n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB"}
    worker_timeout = 120.0

    @pytest.fixture(autouse=True)
    def _simulator(self, offline_ec2):
        self.simulator = offline_ec2

    def _ec2(self):
        return self.simulator.client("ec2", "us-east-1")

    def assert_nothing_left(self, record):
        ec2 = self._ec2()
        tag = [{"Name": "tag:coiled:cluster", "Values": [record.name]}]
        live = [
            i["InstanceId"]
            for r in ec2.describe_instances(Filters=tag)["Reservations"]
            for i in r["Instances"]
            if i["State"]["Name"] != "terminated"
        ]
        assert live == []
        assert ec2.describe_security_groups(Filters=tag)["SecurityGroups"] == []
        ssm = self.simulator.client("ssm", "us-east-1")
        assert ssm.get_parameters_by_path(Path=f"/coiled/{record.name}", Recursive=True)["Parameters"] == []
        all_ids = [i["InstanceId"] for r in ec2.describe_instances(Filters=tag)["Reservations"] for i in r["Instances"]]
        wait_until(lambda: not _agents(self.simulator, all_ids), 30, message="node processes to end")

    def freeze_scheduler(self, record):
        agents = _agents(self.simulator, [record.backend_ids["scheduler_instance_id"]])
        for agent in agents:
            agent.send_signal(signal.SIGSTOP)

        def thaw():
            for agent in agents:
                if agent.is_running():
                    agent.send_signal(signal.SIGCONT)

        return thaw

    def running_worker_processes(self, record):
        # One machine per worker: count the machines whose node agent still runs.
        return sum(1 for w in record.workers if _agents(self.simulator, [w.backend_ids["instance_id"]]))


def test_environment_is_offline(offline_ec2):
    assert os.environ["AWS_ENDPOINT_URL"] == offline_ec2.endpoint_url
