"""What the security review asked of the k8s backend: the cluster's environ only in its Secret,
a LoadBalancer that admits only the client, kept logs readable by their owner only."""

import base64
import json
import socket
import threading
import warnings
from pathlib import Path

import pytest
from coiled_k8s.options import K8sOptions

import coiled

SECRET = "v4lue-that-only-the-secret-holds-9f1c"


def test_environ_only_in_the_secret_a_restricted_balancer_and_private_kept_logs(offline_k8s, k8s_options):
    from distributed import Client

    options = {**k8s_options, "service_type": "LoadBalancer"}  # allow_ingress_from: "me", the default
    cluster = coiled.Cluster(name="k8s-secure", backend="k8s", backend_options=options, n_workers=1, worker_cpu=1,
                             worker_memory="1 GiB", environ={"COILED_TEST_SECRET": SECRET})
    try:
        uid = cluster.record.backend_ids["uid"]
        objects = offline_k8s.objects(label_selector=f"coiled.io/cluster-uid={uid}")
        everything = offline_k8s.objects(label_selector="coiled.io/cluster=k8s-secure")  # the owner too
        assert {"configmaps", "secrets", "pods", "services"} <= {res for res, _ in everything}
        holders = [(res, o["metadata"]["name"]) for res, o in everything if SECRET in json.dumps(o)]
        assert holders == []  # in plain text nowhere: not in the owner's spec, a ConfigMap, a pod, the Service
        [secret] = [o for res, o in objects if res == "secrets"]
        assert SECRET in base64.b64decode(secret["data"]["environ.json"]).decode()
        # Teardown deletes it by name with this uid as a precondition (the client may not list Secrets).
        [owner] = [o for res, o in everything if res == "configmaps" and o["metadata"]["name"] == "k8s-secure-cluster"]
        assert owner["data"]["secret_uid"] == secret["metadata"]["uid"]
        # In the Secret, not in the pods' specs: only mounted (the node add-on reads it).
        for res, pod in objects:
            if res == "pods":
                assert "COILED_TEST_SECRET" not in json.dumps(pod["spec"])
        [service] = [o for res, o in objects if res == "services"]
        assert service["spec"]["loadBalancerSourceRanges"] == ["127.0.0.1/32"]  # the client, in loopback mode
        with Client(cluster) as client:
            import os

            assert set(client.run(lambda: os.environ.get("COILED_TEST_SECRET")).values()) == {SECRET}
    finally:
        cluster.shutdown()
    kept = Path(offline_k8s.workdir / "kept-logs") / "default" / "k8s-secure" / uid
    logs = list(kept.glob("*.log"))
    assert logs
    for path in [kept, kept.parent, kept.parent.parent, kept.parent.parent.parent]:
        assert path.stat().st_mode & 0o777 == 0o700, path
    for path in logs:
        assert path.stat().st_mode & 0o777 == 0o600, path


def _echo_server():
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"hello")
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    return server


@pytest.mark.parametrize(("ranges", "admitted"), [(["127.0.0.1/32"], True), (["203.0.113.7/32"], False), (None, True)])
def test_the_offline_balancer_drops_sources_outside_its_ranges(ranges, admitted):
    from coiled_k8s.offline.network import PortForwarder

    backend = _echo_server()
    forwarder = PortForwarder(("127.0.0.1", 0), lambda: backend.getsockname(), ranges)
    try:
        with socket.create_connection(forwarder.server.getsockname(), timeout=10) as conn:
            try:
                data = conn.recv(5)
            except ConnectionResetError:
                data = b""
        assert (data == b"hello") is admitted
    finally:
        forwarder.close()
        backend.close()


def test_allow_ingress_from_values():
    from coiled_k8s.plugin import _source_ranges
    from coiled_k8s.resources import service_manifest

    assert K8sOptions(allow_ingress_from="203.0.113.7").allow_ingress_from == ["203.0.113.7/32"]
    assert K8sOptions(allow_ingress_from=["10.1.2.3/16", "2001:db8::1"]).allow_ingress_from == ["10.1.0.0/16",
                                                                                             "2001:db8::1/128"]
    with pytest.raises(ValueError, match="'my laptop' is not a network"):
        K8sOptions(allow_ingress_from="my laptop")
    lb = K8sOptions(service_type="LoadBalancer", allow_ingress_from="203.0.113.0/24")
    assert _source_ranges(lb) == ["203.0.113.0/24"]
    assert _source_ranges(K8sOptions(service_type="LoadBalancer", allow_ingress_from="everyone")) is None
    assert _source_ranges(K8sOptions(service_type="NodePort", allow_ingress_from="203.0.113.0/24")) is None
    owner = {"name": "x-cluster", "uid": "u", "namespace": "d"}
    assert "loadBalancerSourceRanges" not in service_manifest("x", K8sOptions(service_type="NodePort"), owner,
                                                              ["203.0.113.0/24"])["spec"]


def test_a_node_port_cannot_be_restricted_and_the_user_is_told():
    from coiled_k8s.plugin import preflight

    from coiled_core.spec import resolve_cluster_spec

    spec = resolve_cluster_spec({"name": "x", "backend": "k8s", "n_workers": 1})
    with pytest.warns(UserWarning, match="NodePort Service cannot be restricted"):
        preflight(spec, K8sOptions(service_type="NodePort", allow_ingress_from="203.0.113.0/24"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preflight(spec, K8sOptions(service_type="LoadBalancer", allow_ingress_from="203.0.113.0/24"))
