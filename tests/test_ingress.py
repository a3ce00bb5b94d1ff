"""Who may reach a scheduler with an outside address: one rule, in the core, for every backend."""

from __future__ import annotations

import pytest

from coiled_core import ingress
from coiled_core.errors import ClusterSpecError


def test_a_given_range_is_kept_as_it_is():
    assert ingress.client_cidr("10.1.0.0/16") == "10.1.0.0/16"


@pytest.mark.parametrize("given", [None, "me"])
def test_by_default_only_this_clients_address(monkeypatch, given):
    monkeypatch.setattr(ingress, "public_address", lambda: "203.0.113.7")
    assert ingress.client_cidr(given) == "203.0.113.7/32"
    monkeypatch.setattr(ingress, "public_address", lambda: "2001:db8::7")
    assert ingress.client_cidr(given) == "2001:db8::7/128"


def test_an_unknown_address_names_the_parameter(monkeypatch):
    monkeypatch.setattr(ingress, "PUBLIC_ADDRESS_URL", "http://127.0.0.1:9/unreachable")
    with pytest.raises(ClusterSpecError, match=r"allow_ingress_from: allow_ingress_from is not set .*'203\.0\.113\.7/32'"):
        ingress.client_cidr(None)


def test_every_backend_with_outside_addresses_uses_it(monkeypatch):
    """AWS and GCP firewall rules and a Kubernetes LoadBalancer admit the same address."""
    from coiled_aws import network
    from coiled_aws.options import AWSOptions
    from coiled_gcp import plugin as gcp
    from coiled_gcp.options import GCPOptions
    from coiled_k8s import plugin as k8s
    from coiled_k8s.options import K8sOptions

    monkeypatch.setattr(ingress, "public_address", lambda: "198.51.100.4")
    monkeypatch.delenv("DASK_COILED__LOOPBACK_ADDRESSES", raising=False)
    assert network.client_cidr(AWSOptions(region="us-east-1")) == "198.51.100.4/32"
    assert gcp._client_cidr(GCPOptions()) == "198.51.100.4/32"
    assert k8s._source_ranges(K8sOptions(service_type="LoadBalancer")) == ["198.51.100.4/32"]
