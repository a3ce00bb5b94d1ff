"""Provisioning on the offline Compute Engine with no machine booting: what is created, the
keywords' effect, capacity fallbacks, a fault at each step rolled back, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from gcp_specs import BASE, make
from coiled_gcp import plugin, storage
from coiled_gcp.options import GCPOptions
from coiled_gcp.session import GCP

from coiled_core.errors import ClusterSpecError, CoiledError, ProvisionError
from coiled_core.security import ClusterTLS


def _instances(fake, name):
    label = plugin.cluster_label(name)
    return [i for i in fake.state.instances.values() if i["labels"].get(plugin.LABEL_CLUSTER) == label]


def _assert_nothing_left(fake, name):
    label = plugin.cluster_label(name)
    assert _instances(fake, name) == []
    assert [f for f in fake.state.firewalls if label in f] == []
    assert [a for (_, a) in fake.state.addresses if label in a] == []
    assert [s for s in fake.state.secrets if f"coiled-{label}-" in s] == []
    assert not any(k == f"claims/{label}.json" for (_, k) in fake.state.objects)


def _provision(name, options=None, tls=False, **keywords):
    spec, opts = make(name, options, security=tls, **keywords)
    material = ClusterTLS.generate(name) if tls else None
    return spec, opts, plugin.provision(spec, opts, material)


def test_one_wave_labels_firewall_and_secrets(api_only):
    _spec, options, record = _provision("wave", tls=True)
    try:
        instances = _instances(api_only, "wave")
        assert sorted(i["labels"][plugin.LABEL_ROLE] for i in instances) == ["scheduler", "worker", "worker"]
        for i in instances:
            assert {plugin.LABEL_OWNER, plugin.LABEL_CREATED, plugin.LABEL_EXPIRES} <= set(i["labels"])
            # Nothing secret in metadata: the keys are in Secret Manager.
            assert "PRIVATE KEY" not in json.dumps(i["metadata"])
            assert i["scheduling"].get("automaticRestart") is False
        scheduler = next(i for i in instances if i["labels"][plugin.LABEL_ROLE] == "scheduler")
        assert record.scheduler_address.startswith("tls://")
        assert record.backend_ids["scheduler_private_ip"] == scheduler["networkInterfaces"][0]["networkIP"]
        # Workers came in one bulkInsert, after no wait for the scheduler.
        assert api_only.calls.get("POST /compute/v1/projects/offline-project/zones/us-east1-b/instances/bulkInsert", 0) >= 1
        client, internal = (api_only.state.firewalls[n] for n in plugin._firewall_names(plugin.cluster_label("wave")))
        assert client["sourceRanges"] == ["127.0.0.1/32"]
        assert client["allowed"] == [{"IPProtocol": "tcp", "ports": ["8786", "8787"]}]
        assert internal["sourceTags"] == internal["targetTags"] == [f"coiled-{plugin.cluster_label('wave')}"]
        gcp = GCP(options)
        worker_secret = json.loads(storage.get_secret(gcp, storage.secret_id(plugin.cluster_label("wave"), "worker")))
        assert "PRIVATE KEY" in json.dumps(worker_secret["tls"])
        assert record.spec["n_workers"] == 2
    finally:
        plugin.teardown(record, options)
    _assert_nothing_left(api_only, "wave")


def test_environ_is_a_secret_not_metadata(api_only):
    _spec, options, record = _provision("environ", environ={"API_KEY": "hunter2-value"})
    try:
        for i in _instances(api_only, "environ"):
            assert "hunter2-value" not in json.dumps(i)
        gcp = GCP(options)
        worker = json.loads(storage.get_secret(gcp, storage.secret_id(plugin.cluster_label("environ"), "worker")))
        assert worker["environ"] == {"API_KEY": "hunter2-value"}
    finally:
        plugin.teardown(record, options)


def test_keywords_map_onto_options(api_only):
    _spec, options, record = _provision(
        "keywords",
        region="us-east1",
        worker_vm_types=["n2-standard-4"],
        spot_policy="spot",
        tags={"Team": "Data Science"},
        worker_disk_size=120,
    )
    try:
        workers = [i for i in _instances(api_only, "keywords") if i["labels"][plugin.LABEL_ROLE] == "worker"]
        assert {i["machineType"].rsplit("/", 1)[-1] for i in workers} == {"n2-standard-4"}
        assert {i["scheduling"]["provisioningModel"] for i in workers} == {"SPOT"}
        assert {i["scheduling"]["instanceTerminationAction"] for i in workers} == {"DELETE"}
        assert {i["labels"]["team"] for i in workers} == {"data-science"}
        assert {i["disks"][0]["initializeParams"]["diskSizeGb"] for i in workers} == {"120"}  # int64: a string
    finally:
        plugin.teardown(record, options)


def test_arm_picks_arm_types_and_image(api_only):
    spec, options = make("arm", arm=True)
    plan = plugin._plan(GCP(options), spec, options)
    assert all(t.architecture == "ARM64" for t in plan.workers)
    assert plan.image.endswith("debian-12-arm64")


def test_lifetime_cap_sets_max_run_duration(api_only):
    _spec, options, record = _provision("capped", cluster_timeout="1h")
    try:
        for i in _instances(api_only, "capped"):
            assert int(i["scheduling"]["maxRunDuration"]["seconds"]) >= 3600
            assert i["scheduling"]["instanceTerminationAction"] == "DELETE"
    finally:
        plugin.teardown(record, options)


def test_zone_exhaustion_falls_back_to_the_next_zone(api_only):
    api_only.exhaust(zone="us-east1-b")
    _spec, options, record = _provision("nextzone")
    try:
        assert {i["zone"].rsplit("/", 1)[-1] for i in _instances(api_only, "nextzone")} == {"us-east1-c"}
    finally:
        plugin.teardown(record, options)


def test_quota_falls_back_to_the_next_machine_type(api_only):
    spec, options = make("quota", {"machine_types": ["n2-standard-2", "e2-standard-2"]})
    api_only.exhaust(machine_type="n2-standard-2", code="QUOTA_EXCEEDED")
    record = plugin.provision(spec, options, None)
    try:
        workers = [i for i in _instances(api_only, "quota") if i["labels"][plugin.LABEL_ROLE] == "worker"]
        assert {i["machineType"].rsplit("/", 1)[-1] for i in workers} == {"e2-standard-2"}
    finally:
        plugin.teardown(record, options)


def test_spot_with_fallback_goes_on_demand(api_only):
    api_only.exhaust(spot_only=True)
    _spec, options, record = _provision("fallback", spot_policy="spot_with_fallback")
    try:
        workers = [i for i in _instances(api_only, "fallback") if i["labels"][plugin.LABEL_ROLE] == "worker"]
        assert len(workers) == 2
        assert {i["scheduling"].get("provisioningModel", "STANDARD") for i in workers} == {"STANDARD"}
    finally:
        plugin.teardown(record, options)


def test_spot_only_fails_clearly_without_spot_capacity(api_only):
    api_only.exhaust(spot_only=True)
    spec, options = make("spotonly", spot_policy="spot")
    with pytest.raises(ProvisionError, match="no capacity for 2 worker"):
        plugin.provision(spec, options, None)
    _assert_nothing_left(api_only, "spotonly")


def test_no_capacity_anywhere_is_a_clear_error_and_full_rollback(api_only):
    api_only.exhaust()
    spec, options = make("nocapacity")
    with pytest.raises(ProvisionError, match="no capacity for the scheduler.*ZONE_RESOURCE_POOL_EXHAUSTED"):
        plugin.provision(spec, options, None)
    _assert_nothing_left(api_only, "nocapacity")


@pytest.mark.parametrize(
    "method, path, step",
    [
        ("POST", r"/b/[^/]+/o$", "preparing artifacts"),
        ("POST", r"/global/firewalls$", "creating the firewall rules"),
        ("POST", r"/v1/projects/[^/]+/secrets$", "storing secrets"),
        ("POST", r"/addresses$", "reserving the scheduler's address"),
        ("POST", r"/zones/[^/]+/instances$", "creating the scheduler"),
        ("POST", r"/instances/bulkInsert$", "creating 2 workers"),
    ],
    ids=["artifacts", "firewall", "secrets", "address", "scheduler", "workers"],
)
def test_a_fault_at_each_step_rolls_back_everything(api_only, method, path, step):
    name = f"fault-{step.split()[0]}-{len(path)}"
    spec, options = make(name, security=True)
    # Artifacts already uploaded by an earlier test would skip the upload: make it fresh.
    if step == "preparing artifacts":
        api_only.state.objects.clear()
    api_only.fail(method, path)
    with pytest.raises(ProvisionError, match=step):
        plugin.provision(spec, options, ClusterTLS.generate(name))
    _assert_nothing_left(api_only, name)


def test_teardown_is_idempotent_and_lists_nothing(api_only):
    _spec, options, record = _provision("twice")
    assert "twice" in [r.name for r in plugin.list_clusters(options)]
    plugin.teardown(record, options)
    assert plugin.teardown(record, options).state.value == "stopped"
    assert plugin.describe("twice", options) is None


def test_paging_of_the_aggregated_list(api_only):
    _spec, options, record = _provision("paged", n_workers=7)
    try:
        from google.cloud import compute_v1

        gcp = GCP(options)
        request = compute_v1.AggregatedListInstancesRequest(project=gcp.project, max_results=3)
        pages = list(gcp.instances.aggregated_list(request=request).pages)
        assert len(pages) >= 3
        assert len(plugin.describe("paged", options).workers) == 7
    finally:
        plugin.teardown(record, options)


def test_claims_are_atomic(api_only):
    options = GCPOptions(**BASE)
    assert plugin.claim_name("claimed", options) is True
    assert plugin.claim_name("claimed", options) is False
    plugin.teardown(plugin.ClusterRecord(name="claimed", backend="gcp"), options)
    assert plugin.claim_name("claimed", options) is True
    plugin.teardown(plugin.ClusterRecord(name="claimed", backend="gcp"), options)


def test_missing_project_is_an_error_before_anything_exists(api_only, monkeypatch):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    spec, options = make("noproject")
    with pytest.raises(ClusterSpecError, match="backend_options.project"):
        plugin.preflight(spec, options)


def test_missing_credentials_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("COILED_GCP_ENDPOINT", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    spec, options = make("nocreds")
    with pytest.raises(CoiledError, match="credentials|GOOGLE_APPLICATION_CREDENTIALS"):
        plugin.preflight(spec, options)


def test_import_does_not_import_the_sdk():
    code = "import sys, coiled_gcp, coiled_gcp.plugin, coiled_gcp.node; print('google.cloud.compute_v1' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ))
    assert out.stdout.strip() == "False"
