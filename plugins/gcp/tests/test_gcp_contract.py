"""The GCP backend passes the contract suite on the offline Compute Engine."""

import os
import signal

import psutil
import pytest

from coiled_core.testing import BackendContract, wait_until

pytestmark = pytest.mark.usefixtures("offline_gcp")

OPTIONS = {"region": "us-east1", "allow_ingress_from": "127.0.0.1/32"}


def _agents(fake, names=(), prefix=None):
    """Node agent processes of the instances ``names`` (or whose names start with ``prefix``)."""
    found = []
    for proc in psutil.process_iter():
        try:
            instance = proc.environ().get("COILED_INSTANCE_ID", "")
            wanted = instance in names or (prefix is not None and instance.startswith(prefix))
            if wanted and "coiled_core.node" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    return found


class TestGCPContract(BackendContract):
    backend = "gcp"
    backend_options = OPTIONS
    # One worker per cluster keeps the suite within its time budget on two cores.
    cluster_kwargs = {"n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB"}
    worker_timeout = 120.0

    @pytest.fixture(autouse=True)
    def _fake(self, offline_gcp):
        self.fake = offline_gcp

    def assert_nothing_left(self, record):
        from coiled_gcp import plugin, storage
        from coiled_gcp.options import GCPOptions
        from coiled_gcp.session import GCP

        gcp = GCP(GCPOptions(**OPTIONS))
        label = plugin.cluster_label(record.name)
        assert plugin._leftovers(gcp, label) == []
        assert [k for (_, k) in self.fake.state.addresses if label in k] == []
        assert storage.read(gcp, storage.bucket_name(gcp), plugin._claim_key(label)) is None
        # Every machine of the cluster has ended: no node agent of its instances runs.
        wait_until(lambda: not _agents(self.fake, prefix=f"coiled-{label}-"), 30, message="node processes to end")

    def freeze_scheduler(self, record):
        agents = _agents(self.fake, {record.backend_ids["scheduler_instance"]})
        for agent in agents:
            agent.send_signal(signal.SIGSTOP)

        def thaw():
            for agent in agents:
                if agent.is_running():
                    agent.send_signal(signal.SIGCONT)

        return thaw

    def running_worker_processes(self, record):
        return sum(1 for w in record.workers if _agents(self.fake, {w.backend_ids["instance"]}))


def test_environment_is_offline(offline_gcp):
    assert os.environ["COILED_GCP_ENDPOINT"] == offline_gcp.endpoint
