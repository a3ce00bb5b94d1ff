"""Choosing instance types from moto's real catalogue, the per-region cache, and the price table.

moto's ``describe_instance_types`` serialises ~1400 types and takes about 2 s, so the catalogue is
fetched once for the module.
"""

import boto3
import pytest
from moto import mock_aws

from coiled_aws import instance_types as it
from coiled_aws.instance_types import (
    GiB,
    MiB,
    InstanceTypeInfo,
    choose_instance_types,
    describe_instance_types,
    named_instance_types,
    nearest_instance_types,
    system_reserve,
    worker_memory_limit,
)
from coiled_aws.prices import ON_DEMAND_USD_PER_HOUR, estimate_cost, price, region_multiplier
from coiled_core.errors import ClusterSpecError

REGION = "us-east-1"


@pytest.fixture(scope="module")
def aws():
    """moto's in-process AWS, with fake credentials."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        with mock_aws():
            yield


def counting_client(region: str = REGION):
    """An EC2 client and a list that grows by one per DescribeInstanceTypes call it makes."""
    client = boto3.client("ec2", region_name=region)
    calls: list[dict] = []
    client.meta.events.register(
        "before-parameter-build.ec2.DescribeInstanceTypes", lambda params, **kw: calls.append(dict(params))
    )
    return client, calls


@pytest.fixture(scope="module")
def catalogue(aws):
    """The us-east-1 catalogue, fetched with a cold cache (and the cache emptied afterwards)."""
    it.clear_cache()
    client, calls = counting_client()
    types = describe_instance_types(client, REGION)
    assert len(calls) == 1
    yield types
    it.clear_cache()


def by_name(types, name):
    return next(t for t in types if t.name == name)


# -- the catalogue ----------------------------------------------------------------------------


def test_catalogue_parsed(catalogue):
    assert len(catalogue) > 500
    m = by_name(catalogue, "m6i.xlarge")
    assert (m.vcpus, m.memory_bytes, m.gpus, m.gpu_model) == (4, 16 * GiB, 0, None)
    assert m.family == "m6i" and m.series == "m" and "x86_64" in m.architectures
    assert m.price_per_hour == pytest.approx(0.192)
    g = by_name(catalogue, "g4dn.xlarge")
    assert (g.gpus, g.gpu_model) == (1, "NVIDIA T4")
    assert by_name(catalogue, "m6g.xlarge").architectures == ("arm64",)
    assert by_name(catalogue, "m5.metal").bare_metal
    assert by_name(catalogue, "inf2.xlarge").other_accelerators
    frac = by_name(catalogue, "g6f.large")  # a fractional GPU: no whole GPU, but a GPU type
    assert frac.gpus == 0 and frac.gpu_model


def test_describe_is_cached_per_region(catalogue, aws):
    client, calls = counting_client()
    again = describe_instance_types(client, REGION)
    assert calls == [] and again == catalogue
    describe_instance_types(client)  # region defaults to the client's: same cache entry
    assert calls == []
    it.clear_cache()
    describe_instance_types(client, REGION)
    assert len(calls) == 1
    assert calls[0].get("MaxResults") == it.PAGE_SIZE


class FakeEC2:
    """Serves fixed pages; records the NextToken of each call."""

    class meta:
        region_name = "xx-test-1"
        endpoint_url = "http://fake"

    def __init__(self, pages):
        self.pages = pages
        self.tokens: list[str | None] = []

    def describe_instance_types(self, **kwargs):
        self.tokens.append(kwargs.get("NextToken"))
        return self.pages[min(len(self.tokens), len(self.pages)) - 1]


def item(name, vcpus=2, mib=8192):
    return {
        "InstanceType": name,
        "VCpuInfo": {"DefaultVCpus": vcpus},
        "MemoryInfo": {"SizeInMiB": mib},
        "ProcessorInfo": {"SupportedArchitectures": ["x86_64"]},
        "CurrentGeneration": True,
    }


def test_pagination_follows_tokens():
    it.clear_cache()
    fake = FakeEC2(
        [
            {"InstanceTypes": [item("m9.large")], "NextToken": "a"},
            {"InstanceTypes": [item("m9.xlarge", 4, 16384)], "NextToken": "b"},
            {"InstanceTypes": [item("m9.2xlarge", 8, 32768)]},
        ]
    )
    types = describe_instance_types(fake)
    assert [t.name for t in types] == ["m9.2xlarge", "m9.large", "m9.xlarge"]
    assert fake.tokens == [None, "a", "b"]
    it.clear_cache()


def test_pagination_guard_when_tokens_are_ignored():
    """moto 5.x ignores NextToken: the same page again must end the loop, not spin forever."""
    it.clear_cache()
    same = FakeEC2([{"InstanceTypes": [item("m9.large")], "NextToken": "again"}])
    assert [t.name for t in describe_instance_types(same)] == ["m9.large"]
    assert len(same.tokens) == 2  # second page: nothing new, so stop
    it.clear_cache()
    fresh_tokens = FakeEC2(
        [
            {"InstanceTypes": [item("m9.large")], "NextToken": "t1"},
            {"InstanceTypes": [item("m9.large")], "NextToken": "t2"},
        ]
    )
    describe_instance_types(fresh_tokens)
    assert len(fresh_tokens.tokens) == 2
    it.clear_cache()


def test_pagination_guard_on_repeated_token():
    it.clear_cache()
    counter = iter(range(10_000))

    class Endless(FakeEC2):
        def describe_instance_types(self, **kwargs):
            self.tokens.append(kwargs.get("NextToken"))
            return {"InstanceTypes": [item(f"m9.s{next(counter)}")], "NextToken": "same"}

    endless = Endless([])
    assert len(describe_instance_types(endless)) == 2
    assert endless.tokens == [None, "same"]
    it.clear_cache()


# -- choosing ---------------------------------------------------------------------------------


def test_four_cpu_sixteen_gib_is_an_m_family_xlarge(catalogue):
    chosen = choose_instance_types(catalogue, cpu=4, memory_bytes=16 * GiB, gpus=0)
    assert chosen[0].name in {"m5.xlarge", "m6i.xlarge", "m7i.xlarge"}
    assert len(chosen) == 4
    assert len({t.name for t in chosen}) == 4
    for t in chosen:
        assert t.series == "m" and t.vcpus >= 4 and 14.4 <= t.memory_gib <= 17.6
        assert t.gpu_model is None and "x86_64" in t.architectures and not t.bare_metal
    # priced types come first, cheapest among the same generation
    assert all(t.price_per_hour is not None for t in chosen[:3])


def test_two_cpu_eight_gib_is_a_large(catalogue):
    chosen = choose_instance_types(catalogue, cpu=2, memory_bytes=8 * GiB, gpus=0, count=2)
    assert len(chosen) == 2
    assert all(t.name.endswith(".large") and t.series == "m" for t in chosen)


def test_memory_window_and_family_order(catalogue):
    # 8 vCPU / 16 GiB: no m type has that shape, a compute type does.
    chosen = choose_instance_types(catalogue, cpu=8, memory_bytes=16 * GiB)
    assert chosen[0].series == "c" and chosen[0].vcpus == 8 and chosen[0].memory_bytes == 16 * GiB
    # 16 vCPU / 16 GiB: nothing within 10 %, so the smallest memory above: 32 GiB.
    chosen = choose_instance_types(catalogue, cpu=16, memory_bytes=16 * GiB)
    assert {t.memory_bytes for t in chosen} == {32 * GiB}
    # 1 GiB: only the burstable family has it.
    assert choose_instance_types(catalogue, cpu=1, memory_bytes=1 * GiB)[0].series == "t"


def test_arm_architecture(catalogue):
    chosen = choose_instance_types(catalogue, cpu=4, memory_bytes=16 * GiB, arch="arm64")
    assert all(t.architectures == ("arm64",) for t in chosen)


def test_gpu_request_picks_gpu_families(catalogue):
    chosen = choose_instance_types(catalogue, cpu=4, memory_bytes=16 * GiB, gpus=1)
    assert chosen and all(t.series in {"g", "p"} and t.gpus >= 1 for t in chosen)
    assert chosen[0].name == "g4dn.xlarge"  # the cheapest listed GPU type of that shape
    big = choose_instance_types(catalogue, cpu=4, memory_bytes=16 * GiB, gpus=8)
    assert big and all(t.gpus >= 8 and t.series in {"g", "p"} for t in big)
    # and without GPUs, no GPU type at all (fractional ones included)
    cpu_only = choose_instance_types(catalogue, cpu=2, memory_bytes=8 * GiB, count=100)
    assert all(t.gpu_model is None for t in cpu_only)


def test_huge_request_names_the_nearest_types(catalogue):
    with pytest.raises(ClusterSpecError) as info:
        choose_instance_types(catalogue, cpu=1000, memory_bytes=16 * GiB, region=REGION)
    message = str(info.value)
    assert "1000 vCPU" in message and "16 GiB" in message and "in us-east-1" in message
    assert "worker_cpu" in message and "instance_types" in message
    nearest = nearest_instance_types(catalogue, 1000, 16 * GiB)
    assert len(nearest) == 3
    for t in nearest:
        assert t.name in message
    largest = max(t.vcpus for t in catalogue if not t.bare_metal and t.gpu_model is None)
    assert nearest[0].vcpus == largest


def test_too_many_gpus_names_gpu_types(catalogue):
    with pytest.raises(ClusterSpecError, match=r"100 GPU.*Nearest: .*x NVIDIA.*worker_gpu") as info:
        choose_instance_types(catalogue, cpu=4, memory_bytes=16 * GiB, gpus=100, what="worker")
    assert "scheduler" not in str(info.value)


def test_named_types(catalogue):
    named = named_instance_types(catalogue, ["m7i.xlarge", "c6i.large"])
    assert [t.name for t in named] == ["m7i.xlarge", "c6i.large"]
    with pytest.raises(ClusterSpecError, match="'m6i.xlarg' is not an instance type.*did you mean 'm6i.xlarge'"):
        named_instance_types(catalogue, ["m6i.xlarg"])


def test_worker_memory_limit_keeps_a_system_reserve():
    def info(mem):
        return InstanceTypeInfo(name="x.y", vcpus=4, memory_bytes=mem)

    assert worker_memory_limit(info(16 * GiB)) == 16 * GiB - int(16 * GiB * 0.1)
    assert worker_memory_limit(info(2 * GiB)) == 2 * GiB - 512 * MiB  # the 512 MiB floor
    assert worker_memory_limit(info(768 * GiB)) == 760 * GiB  # the 8 GiB cap
    assert worker_memory_limit(info(512 * MiB)) == 256 * MiB  # never more than half
    assert system_reserve(info(16 * GiB)) == int(1.6 * GiB)


# -- prices -----------------------------------------------------------------------------------


def test_prices_and_regional_multiplier():
    assert price("m6i.xlarge", "us-east-1") == pytest.approx(0.192)
    assert price("m6i.xlarge") == pytest.approx(0.192)
    assert price("m5.2xlarge", "us-east-1") == pytest.approx(0.384)
    assert price("g4dn.xlarge", "us-east-1") == pytest.approx(0.526)
    assert price("m6i.xlarge", "eu-central-1") == pytest.approx(0.192 * region_multiplier("eu-central-1"))
    assert region_multiplier("eu-central-1") > 1.0
    assert region_multiplier("xx-nowhere-9") == 1.0
    assert price("m6i.xlarge", "xx-nowhere-9") == pytest.approx(0.192)
    assert price("z9.huge") is None
    for family in ("t3", "m5", "m6i", "m7i", "c5", "c6i", "c7i", "r5", "r6i", "r7i", "g4dn", "g5", "p3"):
        assert any(name.startswith(family + ".") for name in ON_DEMAND_USD_PER_HOUR), family
    for size in ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge"):
        assert f"m6i.{size}" in ON_DEMAND_USD_PER_HOUR


def test_estimate_cost():
    assert estimate_cost([(0.1, 1), (0.2, 10)]) == pytest.approx(2.1)
    assert estimate_cost([0.5, None, (None, 3)], hours=2) == pytest.approx(1.0)
    assert estimate_cost([]) == 0.0
