"""Faults at each step of a k8s start: the error says why, and nothing labelled is left."""

import pytest

import coiled
from coiled_core.errors import ClusterSpecError, ProvisionError
from coiled_core.testing import wait_until

SMALL = {"n_workers": 1, "worker_cpu": 1, "worker_memory": "1 GiB"}


def leftovers(offline, name):
    from coiled_k8s.resources import cluster_base

    return [(res, o["metadata"]["name"]) for res, o in offline.objects(label_selector=f"coiled.io/cluster={cluster_base(name)}")]


def assert_nothing_left(offline, name):
    wait_until(lambda: not leftovers(offline, name), 30, message=f"nothing left of {name}: {leftovers(offline, name)}")


def test_an_image_that_cannot_be_pulled(offline_k8s, k8s_options):
    name = "Bad_Image-Test"  # not a DNS name: the objects get a derived one, the user's stays in an annotation
    with pytest.raises(ProvisionError) as info:
        coiled.Cluster(name=name, backend="k8s", backend_options={**k8s_options, "image": "registry.invalid/dask:0"},
                       timeout="60s", **SMALL)
    assert "ErrImagePull" in str(info.value) or "ImagePullBackOff" in str(info.value)
    assert "registry.invalid/dask:0" in str(info.value)
    assert_nothing_left(offline_k8s, name)


def test_an_unschedulable_scheduler_times_out_saying_why(offline_k8s, k8s_options):
    name = "unschedulable"
    with pytest.raises(ProvisionError) as info:
        coiled.Cluster(name=name, backend="k8s", backend_options={**k8s_options, "node_selector": {"pool": "gpu"}},
                       timeout="5s", **SMALL)
    assert "timeout=5s" in str(info.value)
    assert "Unschedulable" in str(info.value) and "node affinity/selector" in str(info.value)
    assert_nothing_left(offline_k8s, name)


def test_api_faults_409_410_500(offline_k8s, k8s_options):
    from coiled_k8s.resources import owner_name

    from coiled_core.plugins import load_backend

    backend = load_backend("k8s")
    options = backend.validate_options(k8s_options)
    # 409 on the name's ConfigMap held by something that is not a cluster: a clear refusal.
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(offline_k8s.kubeconfig))
    core.create_namespaced_config_map("default", {"metadata": {"name": owner_name("taken")}})
    try:
        with pytest.raises(ClusterSpecError, match="not this cluster's"):
            backend.claim_name("taken", options)
    finally:
        core.delete_namespaced_config_map(owner_name("taken"), "default")
    # 500 on a pod create is retried; 410 on a list restarts it: the start goes through.
    offline_k8s.inject("create", "pods", 500, times=2)
    offline_k8s.inject("list", "pods", 410, times=1)
    cluster = coiled.Cluster(name="flaky-api", backend="k8s", backend_options=k8s_options, **SMALL)
    try:
        assert cluster.scheduler_info["workers"]
    finally:
        cluster.shutdown()
    assert_nothing_left(offline_k8s, "flaky-api")
    # A Service that cannot be created: the start fails naming the step, and the claim goes.
    offline_k8s.inject("create", "services", 500, times=10)
    try:
        with pytest.raises(ProvisionError, match="service"):
            coiled.Cluster(name="no-service", backend="k8s", backend_options=k8s_options, **SMALL)
    finally:
        offline_k8s.clear_faults()  # the backend retried fewer times than that: the rest must not leak
    assert_nothing_left(offline_k8s, "no-service")
    assert backend.describe("no-service", options) is None
