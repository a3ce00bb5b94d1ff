"""The stand-in held to Google's discovery documents: each rule refused as the real service
refuses it, and the stand-in's own replies checked against the same documents."""

from __future__ import annotations

import base64

import pytest
import requests
from coiled_gcp import offline_api

ZONE = "us-east1-b"


@pytest.fixture
def api(api_only):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {api_only.token}"
    refused = len(api_only.refused)
    yield session
    session.close()
    del api_only.refused[refused:]


def _compute(fake, path):
    return f"{fake.endpoint}/compute/v1/projects/{fake.project}/{path}"


def _bulk(name="bulk", **properties):
    return {
        "count": "1",
        "minCount": 1,  # int64 as a JSON number: Google's parser takes both forms
        "perInstanceProperties": {name: {}},
        "instanceProperties": {"machineType": "e2-standard-2", "networkInterfaces": [{"network": "global/networks/default"}], **properties},
    }


def _assert_error(reply, status, reason, *words):
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == status
    assert error["errors"][0]["reason"] == reason and error["errors"][0]["domain"] == "global"
    for word in words:
        assert word in error["message"], error["message"]


def _cleanup(fake, *names):
    with fake._lock:
        for name in names:
            fake.state.instances.pop((ZONE, name), None)


def test_every_method_the_backend_calls_is_routed_to_its_discovery_method():
    assert offline_api.route("POST", "/compute/v1/projects/p/zones/z-a/instances/bulkInsert").id == "compute.instances.bulkInsert"
    assert offline_api.route("POST", "/compute/v1/projects/p/zones/z-a/instances").id == "compute.instances.insert"
    assert offline_api.route("POST", "/compute/v1/projects/p/zones/z-a/operations/op-1/wait").id == "compute.zoneOperations.wait"
    assert offline_api.route("GET", "/compute/v1/projects/p/aggregated/instances").id == "compute.instances.aggregatedList"
    assert offline_api.route("GET", "/compute/v1/projects/p/regions/r/subnetworks/s").id == "compute.subnetworks.get"
    upload = offline_api.route("POST", "/upload/storage/v1/b/bucket/o")
    assert upload.id == "storage.objects.insert" and upload.media
    assert offline_api.route("DELETE", "/storage/v1/b/bucket/o/claims%2Fx.json").id == "storage.objects.delete"
    assert offline_api.route("DELETE", "/storage/v1/b/bucket").id == "storage.buckets.delete"
    assert offline_api.route("GET", "/v1/projects/p/secrets/s/versions/latest:access").id == "secretmanager.projects.secrets.versions.access"
    assert offline_api.route("POST", "/v1/projects/p/secrets/s:addVersion").id == "secretmanager.projects.secrets.addVersion"


def test_an_unknown_field_is_refused(api, api_only):
    reply = api.post(_compute(api_only, f"zones/{ZONE}/instances/bulkInsert"), json=_bulk(machineTypeName="e2-standard-2"))
    _assert_error(reply, 400, "invalid", 'Unknown name "machineTypeName"', "Cannot find field")
    assert api_only.instance_names().count("bulk") == 0


def test_a_field_of_the_wrong_json_type_is_refused(api, api_only):
    reply = api.post(_compute(api_only, f"zones/{ZONE}/instances/bulkInsert"), json=_bulk(canIpForward="yes"))
    _assert_error(reply, 400, "invalid", "instanceProperties.canIpForward", "TYPE_BOOL")
    reply = api.post(_compute(api_only, f"zones/{ZONE}/instances/bulkInsert"), json={**_bulk(), "count": "two"})
    _assert_error(reply, 400, "invalid", "count", "TYPE_INT64")


def test_an_enum_value_outside_the_description_is_refused(api, api_only):
    reply = api.post(_compute(api_only, f"zones/{ZONE}/instances/bulkInsert"), json=_bulk(scheduling={"provisioningModel": "CHEAP"}))
    _assert_error(reply, 400, "invalid", "instanceProperties.scheduling.provisioningModel", "SPOT")


def test_a_field_the_method_requires_is_refused_when_missing(api, api_only):
    reply = api.post(_compute(api_only, "global/firewalls"), json={"network": "global/networks/default", "allowed": [{"IPProtocol": "tcp"}]})
    _assert_error(reply, 400, "required", "Required field 'name'")
    reply = api.post(f"{api_only.endpoint}/storage/v1/b", json={"name": "no-project"})
    _assert_error(reply, 400, "required", "project")
    reply = api.post(f"{api_only.endpoint}/v1/projects/{api_only.project}/secrets", json={"replication": {"automatic": {}}})
    _assert_error(reply, 400, "required", "secretId")


def test_an_unknown_query_parameter_is_refused_by_compute(api, api_only):
    reply = api.get(_compute(api_only, f"zones/{ZONE}/instances"), params={"labelFilter": "x"})
    _assert_error(reply, 400, "invalid", "Cannot bind query parameter")
    reply = api.get(_compute(api_only, f"zones/{ZONE}/instances"), params={"maxResults": "many"})
    _assert_error(reply, 400, "invalid", "maxResults")


def test_bulk_insert_takes_only_a_machine_type_name(api, api_only):
    # InstanceProperties.machineType: "If you use the machine type full or partial URL ... the
    # request will result in an INTERNAL_ERROR": an operation that failed.
    body = _bulk(machineType=f"zones/{ZONE}/machineTypes/e2-standard-2")
    operation = api.post(_compute(api_only, f"zones/{ZONE}/instances/bulkInsert"), json=body).json()
    assert operation["status"] == "DONE" and operation["httpErrorStatusCode"] == 500
    assert [e["code"] for e in operation["error"]["errors"]] == ["INTERNAL_ERROR"]
    assert "bulk" not in api_only.instance_names()
    operation = api.post(_compute(api_only, f"zones/{ZONE}/instances/bulkInsert"), json=_bulk()).json()
    assert "error" not in operation
    instance = api.get(_compute(api_only, f"zones/{ZONE}/instances/bulk")).json()
    # The service answers with full URLs, whichever form the request used.
    assert instance["machineType"] == _compute(api_only, f"zones/{ZONE}/machineTypes/e2-standard-2")
    _cleanup(api_only, "bulk")


def test_bulk_insert_takes_only_an_accelerator_type_name(api, api_only):
    accelerators = [{"acceleratorType": f"zones/{ZONE}/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 1}]
    reply = api.post(_compute(api_only, f"zones/{ZONE}/instances/bulkInsert"), json=_bulk(machineType="n1-standard-4", guestAccelerators=accelerators))
    _assert_error(reply, 400, "invalid", "guestAccelerators[0].acceleratorType", "only the accelerator name")
    accelerators[0]["acceleratorType"] = "nvidia-tesla-t4"
    reply = api.post(_compute(api_only, f"zones/{ZONE}/instances/bulkInsert"), json=_bulk(machineType="n1-standard-4", guestAccelerators=accelerators))
    assert reply.status_code == 200 and "error" not in reply.json()
    _cleanup(api_only, "bulk")


def test_insert_takes_a_machine_type_url(api, api_only):
    # Instance.machineType: "Full or partial URL ... in the format zones/zone/machineTypes/machine-type".
    body = {"name": "single", "machineType": "e2-standard-2", "networkInterfaces": [{}]}
    reply = api.post(_compute(api_only, f"zones/{ZONE}/instances"), json=body)
    _assert_error(reply, 400, "invalid", "resource.machineType")
    body["machineType"] = f"zones/{ZONE}/machineTypes/e2-standard-2"
    assert "error" not in api.post(_compute(api_only, f"zones/{ZONE}/instances"), json=body).json()
    _cleanup(api_only, "single")


def test_insert_takes_an_accelerator_type_url(api, api_only):
    body = {
        "name": "single-gpu",
        "machineType": f"zones/{ZONE}/machineTypes/n1-standard-4",
        "guestAccelerators": [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}],
        "networkInterfaces": [{}],
    }
    _assert_error(api.post(_compute(api_only, f"zones/{ZONE}/instances"), json=body), 400, "invalid", "resource.guestAccelerators[0].acceleratorType")


def test_a_path_parameter_outside_its_pattern_is_refused(api, api_only):
    _assert_error(api.get(_compute(api_only, "zones/US_EAST1/instances")), 400, "invalid", "zone")


def test_a_storage_body_is_checked_too(api, api_only):
    reply = api.post(f"{api_only.endpoint}/storage/v1/b", params={"project": api_only.project}, json={"name": "typo", "locaton": "US"})
    _assert_error(reply, 400, "invalid", 'Unknown name "locaton"')


def test_without_a_default_network_an_instance_must_name_one(api, api_only):
    with api_only._lock:
        network = api_only.state.networks.pop("default")
    try:
        reply = api.post(_compute(api_only, f"zones/{ZONE}/instances/bulkInsert"), json=_bulk(networkInterfaces=[{}]))
        _assert_error(reply, 400, "invalid", "global/networks/default", "cannot be found")
        reply = api.post(_compute(api_only, "regions/us-east1/addresses"), json={"name": "internal", "addressType": "INTERNAL"})
        _assert_error(reply, 400, "invalid", "resource.subnetwork")
    finally:
        api_only.state.networks["default"] = network
    reply = api.post(_compute(api_only, "regions/us-east1/addresses"), json={"name": "internal", "addressType": "INTERNAL", "subnetwork": "regions/us-east1/subnetworks/nowhere"})
    _assert_error(reply, 400, "invalid", "subnetwork resource cannot be found")


def test_network_and_subnetwork_must_agree(api, api_only):
    api_only.add_network("other", {"us-east1": "other-east"})
    try:
        url = _compute(api_only, f"zones/{ZONE}/instances/bulkInsert")
        both = [{"network": "global/networks/default", "subnetwork": "regions/us-east1/subnetworks/other-east"}]
        _assert_error(api.post(url, json=_bulk(networkInterfaces=both)), 400, "invalid", "should belong to network")
        unknown = [{"subnetwork": "regions/us-east1/subnetworks/nowhere"}]
        _assert_error(api.post(url, json=_bulk(networkInterfaces=unknown)), 400, "invalid", "subnetwork resource cannot be found")
        custom = [{"network": "global/networks/other"}]
        _assert_error(api.post(url, json=_bulk(networkInterfaces=custom)), 400, "invalid", "Subnetwork should be specified")
        alone = [{"subnetwork": "regions/us-east1/subnetworks/other-east"}]
        assert "error" not in api.post(url, json=_bulk(networkInterfaces=alone)).json()
        interface = api.get(_compute(api_only, f"zones/{ZONE}/instances/bulk")).json()["networkInterfaces"][0]
        assert interface["network"].endswith("/global/networks/other")  # inferred from the subnetwork
    finally:
        _cleanup(api_only, "bulk")
        api_only.state.networks.pop("other")
        api_only.state.subnetworks.pop(("us-east1", "other-east"))


def test_firewall_rules_name_an_existing_network(api, api_only):
    reply = api.post(_compute(api_only, "global/firewalls"), json={"name": "fw", "network": "global/networks/nowhere", "allowed": [{"IPProtocol": "tcp"}]})
    _assert_error(reply, 400, "invalid", "network resource cannot be found")


def test_secret_payloads_are_base64(api, api_only):
    secrets = f"{api_only.endpoint}/v1/projects/{api_only.project}/secrets"
    assert api.post(secrets, params={"secretId": "b64"}, json={"replication": {"automatic": {}}}).status_code == 200
    try:
        _assert_error(api.post(f"{secrets}/b64:addVersion", json={"payload": {"data": "not base64!"}}), 400, "invalid", "TYPE_BYTES")
        _assert_error(api.post(f"{secrets}/b64:addVersion", json={"payload": {"text": "x"}}), 400, "invalid", 'Unknown name "text"')
        data = base64.b64encode(b"value").decode()
        assert api.post(f"{secrets}/b64:addVersion", json={"payload": {"data": data}}).status_code == 200
    finally:
        assert api.delete(f"{secrets}/b64").status_code == 200


def test_a_reply_the_description_does_not_describe_is_a_stand_in_error(api, api_only):
    api.post(f"{api_only.endpoint}/storage/v1/b", params={"project": api_only.project}, json={"name": "drifting"})
    api_only.state.buckets["drifting"]["ownerProject"] = "not a Bucket field"
    try:
        reply = api.get(f"{api_only.endpoint}/storage/v1/b/drifting")
        assert reply.status_code == 500 and "does not match its discovery document" in reply.json()["error"]["message"]
        assert any("ownerProject" in d for d in api_only.drift)
    finally:
        api_only.drift.clear()
        del api_only.state.buckets["drifting"]


def test_deletes_answer_204_without_a_body_on_a_kept_alive_connection(api, api_only):
    bucket = f"{api_only.endpoint}/storage/v1/b"
    api.post(bucket, params={"project": api_only.project}, json={"name": "keepalive"})
    upload = f"{api_only.endpoint}/upload/storage/v1/b/keepalive/o"
    api.post(upload, params={"uploadType": "media", "name": "a/b"}, data=b"x")
    reply = api.delete(f"{bucket}/keepalive/o/a%2Fb")
    assert reply.status_code == 204 and reply.content == b""
    # The next response on the same connection is read intact.
    again = api.post(upload, params={"uploadType": "media", "name": "a/b", "ifGenerationMatch": "0"}, data=b"y")
    assert again.status_code == 200 and again.json()["name"] == "a/b"
    assert api.delete(f"{bucket}/keepalive/o/a%2Fb").status_code == 204
    reply = api.delete(f"{bucket}/keepalive")
    assert reply.status_code == 204 and reply.content == b""
    assert api.get(f"{bucket}/keepalive").status_code == 404


def test_spot_instances_cannot_migrate_or_restart(api, api_only):
    url = _compute(api_only, f"zones/{ZONE}/instances/bulkInsert")
    migrate = {"provisioningModel": "SPOT", "onHostMaintenance": "MIGRATE"}
    _assert_error(api.post(url, json=_bulk(scheduling=migrate)), 400, "invalid", "instanceProperties.scheduling.onHostMaintenance")
    restart = {"provisioningModel": "SPOT", "automaticRestart": True}
    _assert_error(api.post(url, json=_bulk(scheduling=restart)), 400, "invalid", "instanceProperties.scheduling.automaticRestart")


def test_only_internal_addresses_name_a_subnetwork(api, api_only):
    body = {"name": "external", "addressType": "EXTERNAL", "subnetwork": "regions/us-east1/subnetworks/default"}
    _assert_error(api.post(_compute(api_only, "regions/us-east1/addresses"), json=body), 400, "invalid", "only for INTERNAL")


def test_a_reserved_address_is_used_in_its_own_subnetwork(api, api_only):
    api_only.add_network("other", {"us-east1": "other-east"})
    addresses = _compute(api_only, "regions/us-east1/addresses")
    try:
        body = {"name": "reserved", "addressType": "INTERNAL", "purpose": "GCE_ENDPOINT", "subnetwork": "regions/us-east1/subnetworks/other-east"}
        assert "error" not in api.post(addresses, json=body).json()
        ip = api.get(f"{addresses}/reserved").json()["address"]
        elsewhere = [{"subnetwork": "regions/us-east1/subnetworks/default", "networkIP": ip}]
        _assert_error(api.post(_compute(api_only, f"zones/{ZONE}/instances/bulkInsert"), json=_bulk(networkInterfaces=elsewhere)), 400, "invalid", "networkIP")
    finally:
        api.delete(f"{addresses}/reserved")
        api_only.state.networks.pop("other")
        api_only.state.subnetworks.pop(("us-east1", "other-east"))


def test_bulk_insert_names_its_instances_and_their_properties(api, api_only):
    url = _compute(api_only, f"zones/{ZONE}/instances/bulkInsert")
    unnamed = {key: value for key, value in _bulk().items() if key != "perInstanceProperties"}
    _assert_error(api.post(url, json=unnamed), 400, "required", "namePattern or perInstanceProperties")
    bare = {key: value for key, value in _bulk().items() if key != "instanceProperties"}
    _assert_error(api.post(url, json=bare), 400, "required", "instanceProperties")
