"""The k8s backend passes the whole contract suite on the offline Kubernetes, in a namespace whose
Pod Security admission enforces the restricted standard (the strictest: what passes there passes
in an unlabelled namespace too, where the backend's other tests run)."""

import signal

import psutil
import pytest
from coiled_k8s.offline.kubelet import MARK_ENV
from coiled_k8s.offline.podsecurity import LABEL_ENFORCE

from coiled_core.testing import BackendContract, wait_until


def pod_processes(offline, uid):
    """Live processes of the pod ``uid`` of ``offline``'s node (the kubelet marks them all)."""
    mark = f"{offline.node.mark}:{uid}"
    found = []
    for proc in psutil.process_iter(["environ", "status"]):
        if (proc.info["environ"] or {}).get(MARK_ENV) == mark and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


class TestK8sContract(BackendContract):
    backend = "k8s"
    # One worker keeps each of the suite's clusters small on two cores; the tests that need more scale up.
    cluster_kwargs = {"n_workers": 1, "worker_cpu": 1, "worker_memory": "1 GiB"}  # noqa: RUF012
    worker_timeout = 120.0
    #: The namespace of the suite's clusters, labelled to enforce the restricted standard.
    namespace = "dask-restricted"

    @pytest.fixture(autouse=True)
    def _offline(self, offline_k8s):
        self.offline = offline_k8s
        offline_k8s.create_namespace(self.namespace, {LABEL_ENFORCE: "restricted"})
        type(self).backend_options = {"kubeconfig": offline_k8s.kubeconfig, "namespace": self.namespace}

    def assert_nothing_left(self, record):
        uid = record.backend_ids["uid"]

        def left():
            return [(res, o["metadata"]["name"]) for res, o in self.offline.objects()
                    if uid in (o["metadata"]["uid"], o["metadata"].get("labels", {}).get("coiled.io/cluster-uid"))]
        # A cluster that ended itself is deleted by the garbage collector, pods after their
        # graceful end: give it a moment, as the API would.
        wait_until(lambda: not left(), 30, message=f"the cluster's objects to go: {left()}")
        wait_until(lambda: not self._processes(uid), 30, message="pod processes to end")

    def test_killed_creator_leaves_nothing(self):
        """As the contract's, and the cluster deleted itself: its scheduler's own service account
        deleted the owner (once, and did nothing else), before the suite's gc could."""
        super().test_killed_creator_leaves_nothing()
        calls = [(user, verb, resource, count) for (user, verb, _, resource), count in self.offline.api.calls.items()
                 if user.startswith(f"system:serviceaccount:{self.namespace}:orphan-")]
        assert [(verb, resource, count) for _, verb, resource, count in calls] == [("delete", "configmaps", 1)]

    def _processes(self, cluster_uid):
        """Live processes of pods of this cluster incarnation, also of pods already deleted."""
        return [p for pod_uid, runtime in list(self.offline.node.runtimes.items())
                if runtime.labels.get("coiled.io/cluster-uid") == cluster_uid
                for p in pod_processes(self.offline, pod_uid)]

    def _pod_uid(self, name):
        pods = [o for res, o in self.offline.objects() if res == "pods" and o["metadata"]["name"] == name]
        return pods[0]["metadata"]["uid"] if pods else None

    def freeze_scheduler(self, record):
        procs = pod_processes(self.offline, self._pod_uid(record.backend_ids["scheduler_pod"]))
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)

        def thaw():
            for proc in procs:
                if proc.is_running():
                    proc.send_signal(signal.SIGCONT)
        return thaw

    def running_worker_processes(self, record):
        return sum(1 for w in record.workers if (uid := self._pod_uid(w.name)) and pod_processes(self.offline, uid))
