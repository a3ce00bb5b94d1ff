"""The client reaches the scheduler through a LoadBalancer or a NodePort Service."""

import pytest

import coiled


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
def test_service_types(offline_k8s, k8s_options, service_type):
    from coiled_k8s.offline.network import LOAD_BALANCER_NETWORK
    from distributed import Client

    from coiled_core.backend import loopback_address

    options = {**k8s_options, "service_type": service_type}
    cluster = coiled.Cluster(name=f"svc-{service_type.lower()}", backend="k8s", backend_options=options, n_workers=0,
                             worker_cpu=1, worker_memory="1 GiB")
    try:
        host = cluster.scheduler_address.split("://")[1].rsplit(":", 1)[0]
        if service_type == "LoadBalancer":  # the balancer's address, not the ClusterIP
            assert host.startswith(loopback_address(str(LOAD_BALANCER_NETWORK[1])).rsplit(".", 2)[0])
        else:  # the node's address and a port of the node-port range
            assert host == loopback_address(offline_k8s.node.node_ip)
            assert 30000 <= int(cluster.scheduler_address.rsplit(":", 1)[1]) < 32768
        with Client(cluster) as client:
            assert client.scheduler_info()["address"]
    finally:
        cluster.shutdown()
