"""What the backend sends, as the stand-in checks it against Google's descriptions: instance
types by name in bulkInsert, the nodes' network and subnetwork, the image of GPU nodes, and the
stale-claim takeover on one connection."""

from __future__ import annotations

import contextlib

import pytest
from gcp_specs import BASE, make
from coiled_gcp import plugin, storage
from coiled_gcp.options import GCPOptions
from coiled_gcp.session import GCP

from coiled_core.backend import ClaimLease
from coiled_core.errors import ClusterSpecError


@contextlib.contextmanager
def _cluster(fake, name, options=None, **keywords):
    """A provisioned cluster (no machine boots); every request it made was one the real service takes."""
    refused = len(fake.refused)
    spec, opts = make(name, options, **keywords)
    record = plugin.provision(spec, opts, None)
    try:
        assert fake.refused[refused:] == []
        yield record, _instances(fake, name)
    finally:
        plugin.teardown(record, opts)


def _instances(fake, name):
    label = plugin.cluster_label(name)
    return [i for i in fake.state.instances.values() if i["labels"].get(plugin.LABEL_CLUSTER) == label]


def _role(instances, role):
    return [i for i in instances if i["labels"][plugin.LABEL_ROLE] == role]


@contextlib.contextmanager
def _network(fake, name, subnetworks=None):
    fake.add_network(name, subnetworks)
    try:
        yield
    finally:
        with fake._lock:
            fake.state.networks.pop(name)
            for key in [k for k, s in fake.state.subnetworks.items() if s["network"] == name]:
                del fake.state.subnetworks[key]


@contextlib.contextmanager
def _without_default_network(fake):
    with fake._lock:
        network = fake.state.networks.pop("default")
        subnetworks = {k: s for k, s in fake.state.subnetworks.items() if s["network"] == "default"}
        for key in subnetworks:
            del fake.state.subnetworks[key]
    try:
        yield
    finally:
        with fake._lock:
            fake.state.networks["default"] = network
            fake.state.subnetworks.update(subnetworks)


# -- instance types ------------------------------------------------------------------------------
def test_bulk_insert_names_machine_and_accelerator_types_bare(api_only):
    with _cluster(api_only, "bare-names", worker_gpu=1, worker_cpu=4, worker_memory="15 GiB") as (_, instances):
        workers = _role(instances, "worker")
        assert len(workers) == 2
        for worker in workers:
            assert worker["machineType"].endswith("/machineTypes/n1-standard-4")
            assert [a["acceleratorType"].rsplit("/", 1)[-1] for a in worker["guestAccelerators"]] == ["nvidia-tesla-t4"]


# -- networks ------------------------------------------------------------------------------------
def _firewall_networks(fake, name):
    return {fake.state.firewalls[rule]["network"].rsplit("/", 1)[-1] for rule in plugin._firewall_names(plugin.cluster_label(name))}


def _address(fake, name):
    return fake.state.addresses[("us-east1", plugin._address_name(plugin.cluster_label(name)))]


def test_a_subnetwork_alone_implies_its_network(api_only):
    with _network(api_only, "vpc", {"us-east1": "vpc-east"}):
        with _cluster(api_only, "subnet-only", {"subnetwork": "vpc-east"}) as (record, instances):
            for instance in instances:
                interface = instance["networkInterfaces"][0]
                assert interface["network"].endswith("/global/networks/vpc")
                assert interface["subnetwork"].endswith("/regions/us-east1/subnetworks/vpc-east")
            # The firewall rules are on the nodes' network, the scheduler's address in their subnetwork.
            assert _firewall_networks(api_only, "subnet-only") == {"vpc"}
            assert _address(api_only, "subnet-only")["subnetwork"].endswith("/subnetworks/vpc-east")
            assert record.backend_ids["scheduler_private_ip"] == _address(api_only, "subnet-only")["address"]


def test_a_network_and_a_subnetwork_of_another_network_is_an_error_before_anything_exists(api_only):
    with _network(api_only, "vpc", {"us-east1": "vpc-east"}):
        spec, options = make("mismatch", {"network": "default", "subnetwork": "vpc-east"})
        with pytest.raises(ClusterSpecError, match=r"backend_options.subnetwork.*'vpc-east'.*network 'vpc'"):
            plugin.provision(spec, options, None)
        spec, options = make("nosubnet", {"subnetwork": "nowhere"})
        with pytest.raises(ClusterSpecError, match=r"backend_options.subnetwork.*'nowhere'.*us-east1"):
            plugin.provision(spec, options, None)
    assert _instances(api_only, "mismatch") == [] and not any("mismatch" in f for f in api_only.state.firewalls)


def test_a_project_without_a_default_network_works_when_the_user_names_one(api_only):
    with _without_default_network(api_only), _network(api_only, "prod"):
        with _cluster(api_only, "named-net", {"network": "prod"}) as (_, instances):
            assert {i["networkInterfaces"][0]["network"].rsplit("/", 1)[-1] for i in instances} == {"prod"}
            assert _firewall_networks(api_only, "named-net") == {"prod"}
            assert _address(api_only, "named-net")["subnetwork"].endswith("/regions/us-east1/subnetworks/prod")
        spec, options = make("no-net")
        with pytest.raises(ClusterSpecError, match=r"backend_options.network.*no network 'default'"):
            plugin.provision(spec, options, None)
        assert api_only.state.firewalls.keys().isdisjoint(plugin._firewall_names(plugin.cluster_label("no-net")))


def test_a_named_network_gets_the_firewall_rules_and_the_scheduler_address(api_only):
    with _network(api_only, "prod"):
        with _cluster(api_only, "prod-net", {"network": "prod"}) as (_, instances):
            assert {i["networkInterfaces"][0]["subnetwork"].rsplit("/", 1)[-1] for i in instances} == {"prod"}
            assert _firewall_networks(api_only, "prod-net") == {"prod"}
            assert _address(api_only, "prod-net")["subnetwork"].endswith("/regions/us-east1/subnetworks/prod")


def test_a_custom_mode_network_uses_its_one_subnetwork_of_the_region(api_only):
    with _network(api_only, "custom", {"us-east1": "custom-east", "us-central1": "custom-central"}):
        with _cluster(api_only, "custom-net", {"network": "custom"}) as (_, instances):
            assert {i["networkInterfaces"][0]["subnetwork"].rsplit("/", 1)[-1] for i in instances} == {"custom-east"}
            assert _firewall_networks(api_only, "custom-net") == {"custom"}


# -- GPU images ----------------------------------------------------------------------------------
def _metadata(instance):
    return {item["key"]: item["value"] for item in instance["metadata"]["items"]}


def test_gpu_nodes_boot_an_image_with_the_nvidia_driver(api_only):
    with _cluster(api_only, "gpu-image", worker_gpu=1, worker_cpu=4, worker_memory="15 GiB") as (_, instances):
        (scheduler,) = _role(instances, "scheduler")
        for worker in _role(instances, "worker"):
            image = worker["disks"][0]["initializeParams"]["sourceImage"]
            assert image == plugin.GPU_IMAGE and image.startswith("projects/deeplearning-platform-release/global/images/family/common-cu")
            assert _metadata(worker)["install-nvidia-driver"] == "True"
        # A node without a GPU keeps the plain image.
        assert scheduler["disks"][0]["initializeParams"]["sourceImage"] == plugin.DEFAULT_IMAGES[False]
        assert "install-nvidia-driver" not in _metadata(scheduler)


def test_cpu_clusters_keep_the_plain_image(api_only):
    with _cluster(api_only, "cpu-image") as (_, instances):
        assert {i["disks"][0]["initializeParams"]["sourceImage"] for i in instances} == {plugin.DEFAULT_IMAGES[False]}
        assert all("install-nvidia-driver" not in _metadata(i) for i in instances)


# -- claims --------------------------------------------------------------------------------------
def test_a_stale_claim_is_taken_over_on_one_connection(api_only):
    options = GCPOptions(**BASE)
    gcp = GCP(options)
    bucket = storage.ensure_bucket(gcp)
    key = plugin._claim_key(plugin.cluster_label("stale-claim"))
    stale = ClaimLease(state="claimed", expires=0.0)
    assert storage.write(gcp, bucket, key, stale.to_json().encode(), if_generation="0")
    try:
        # Read, delete (ifGenerationMatch: a 204) and re-create, all on the plugin's one session.
        assert plugin.claim_name("stale-claim", options) is True
        data, _generation = storage.read(gcp, bucket, key)
        lease = ClaimLease.from_json(data.decode())
        assert lease.state == "claimed" and not lease.is_stale(cluster_live=False)
        # A fresh claim is not taken over.
        assert plugin.claim_name("stale-claim", options) is False
    finally:
        storage.delete(gcp, bucket, key)
