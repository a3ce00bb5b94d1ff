"""With its creator SIGKILLed, the cluster deletes itself: the scheduler's own service account
deletes the owner and Kubernetes' garbage collector the rest (no gc, no client)."""

import json
import os
import signal
import subprocess
import sys

from coiled_core.testing import wait_until
from coiled_k8s.resources import cluster_base

CREATOR = """
import json, sys, time, coiled
cluster = coiled.Cluster(name="self-ending", backend="k8s", backend_options=json.loads(sys.argv[1]), n_workers=1,
                         worker_cpu=1, worker_memory="1 GiB", no_client_timeout="2s", wait_for_workers=True)
print(json.dumps(cluster.record.backend_ids), flush=True)
time.sleep(3600)
"""


def test_a_cluster_whose_creator_was_killed_deletes_itself(offline_k8s, k8s_options):
    env = {**os.environ, "DASK_COILED__HEARTBEAT_INTERVAL": "0.5s"}
    creator = subprocess.Popen([sys.executable, "-c", CREATOR, json.dumps(k8s_options)], stdout=subprocess.PIPE,
                               text=True, env=env)
    try:
        ids = json.loads(creator.stdout.readline())
    finally:
        creator.send_signal(signal.SIGKILL)
        creator.wait(10)
    account = f"system:serviceaccount:default:{cluster_base('self-ending')}-scheduler"

    def everything_gone():
        return not [o for _, o in offline_k8s.objects()
                    if ids["uid"] in (o["metadata"]["uid"], o["metadata"].get("labels", {}).get("coiled.io/cluster-uid"))]
    wait_until(everything_gone, 60, message="the cluster to delete itself")
    assert offline_k8s.api.calls[(account, "delete", "", "configmaps")] == 1  # its owner, by the scheduler itself
    assert not [k for k in offline_k8s.api.calls if k[0] == account and k[1] != "delete"]
