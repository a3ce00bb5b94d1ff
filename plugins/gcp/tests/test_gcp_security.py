"""The GCP backend's security rules on the offline Compute Engine: a bucket of another project is
never used, nodes run as a least-privilege service account that reaches only its own cluster, gc
deletes only what it can prove is ours, bucket logs expire and tokens stay out of arguments."""

from __future__ import annotations

import pytest
from coiled_gcp import plugin, storage
from coiled_gcp.options import GCPOptions
from coiled_gcp.session import GCP

from coiled_core.errors import ProvisionError
from coiled_core.spec import resolve_cluster_spec

BASE = {"allow_ingress_from": "127.0.0.1/32"}


def _spec(name, **keywords):
    return resolve_cluster_spec({"name": name, "n_workers": 1, "worker_cpu": 1, "worker_memory": "2 GiB", "security": False, **keywords})


# -- bucket sniping ------------------------------------------------------------------------------
def test_the_project_number_comes_from_resource_manager_and_owns_new_buckets(api_only):
    gcp = GCP(GCPOptions(bucket="coiled-test-own-bucket"))
    assert storage.project_number(gcp) == api_only.project_number
    assert storage.ensure_bucket(gcp) == "coiled-test-own-bucket"
    assert api_only.state.buckets["coiled-test-own-bucket"]["projectNumber"] == api_only.project_number


@pytest.mark.parametrize("readable", [True, False])
def test_a_bucket_of_another_project_is_refused_before_anything_is_read_or_written(api_only, readable):
    name = f"coiled-sniped-{'readable' if readable else 'hidden'}"
    api_only.add_bucket(name, project_number="999999999999", readable=readable)
    options = GCPOptions(**BASE, bucket=name)
    spec = _spec(f"sniped-{readable}")
    with pytest.raises(ProvisionError) as info:
        plugin.provision(spec, options, None)
    message = str(info.value)
    assert repr(name) in message and "another project" in message and "backend_options={'bucket'" in message
    with pytest.raises(storage.ForeignBucketError):
        plugin.claim_name(spec.name, options)
    with pytest.raises(storage.ForeignBucketError):
        plugin.build_environment(None, options)
    # Nothing of ours went into it, and no cluster was started.
    assert [k for (b, k) in api_only.state.objects if b == name] == []
    assert [i for i in api_only.state.instances.values() if i["labels"].get(plugin.LABEL_CLUSTER) == plugin.cluster_label(spec.name)] == []
