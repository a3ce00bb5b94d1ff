"""backend_options validation: errors name the option and what would be valid."""

import pytest
from coiled_gcp.options import GCPOptions
from pydantic import ValidationError


def test_defaults():
    options = GCPOptions()
    assert options.region == "us-east1" and options.spot_policy == "on-demand" and options.boot_disk_gib == 50


@pytest.mark.parametrize(
    "values, message",
    [
        ({"region": "us-east-1"}, "not a Compute Engine region"),
        ({"zone": "us-east1"}, "not a Compute Engine zone"),
        ({"machine_types": ["m5.large"]}, "AWS instance type"),
        ({"spot_policy": "sometimes"}, "spot_policy"),
        ({"labels": {"coiled-x": "y"}}, "backend's own"),
        ({"allow_ingress_from": "nowhere"}, "not an address range"),
        ({"boot_disk_gib": 5}, "boot_disk_gib"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_values_are_named(values, message):
    with pytest.raises(ValidationError, match=message):
        GCPOptions(**values)


def test_labels_follow_gcp_rules_and_ingress_words():
    options = GCPOptions(labels={"Team": "Data Science!"}, allow_ingress_from="everyone", spot_policy="spot-with-fallback")
    assert options.labels == {"team": "data-science-"}
    assert options.allow_ingress_from == "0.0.0.0/0"
    assert options.spot_policy == "spot_with_fallback"


def test_zone_must_be_in_region():
    with pytest.raises(ValueError, match="not in region"):
        GCPOptions(region="us-east1", zone="us-central1-a").zone_region_check()
