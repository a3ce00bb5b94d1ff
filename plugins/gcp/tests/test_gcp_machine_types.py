"""Machine type selection: cheapest fit, custom types, GPUs, named types, nearest when none fits."""

import pytest
from coiled_gcp import machine_types as mt
from coiled_gcp.offline import MACHINE_TYPES

from coiled_core.errors import ClusterSpecError

GiB = 2**30
CATALOGUE = [
    mt.MachineType(name, cpus, memory, name in ("e2-small", "e2-medium"), "ARM64" if name.startswith("t2a") else "X86_64",
                   tuple((a["guestAcceleratorType"], a["guestAcceleratorCount"]) for a in accelerators))
    for name, cpus, memory, accelerators in MACHINE_TYPES
]


def test_cheapest_fit_first():
    chosen = mt.choose(CATALOGUE, 2, 8 * GiB)
    assert chosen[0].name == "e2-standard-2"
    assert {t.vcpus for t in chosen} == {2}


def test_custom_type_when_nothing_fits_closely():
    (chosen,) = mt.choose(CATALOGUE, 6, 20 * GiB)
    assert chosen.name == "n2-custom-6-20480"


def test_custom_type_rounds_to_the_family_rules():
    assert mt.custom_type(3, 5 * GiB + 1).name == "n2-custom-4-5376"
    assert mt.custom_type(2, 100 * GiB) is None  # more than 8 GiB per vCPU


def test_gpu_default_t4_is_a_guest_accelerator_on_n1():
    chosen = mt.choose(CATALOGUE, 4, 15 * GiB, gpus=1)
    assert chosen[0].family == "n1"
    assert chosen[0].attach == (("nvidia-tesla-t4", 1),)


def test_built_in_gpu_types():
    (chosen, *_) = mt.choose(CATALOGUE, 4, 16 * GiB, gpus=1, gpu_type="nvidia-l4")
    assert chosen.name == "g2-standard-4" and chosen.attach == ()


def test_arm():
    assert {t.architecture for t in mt.choose(CATALOGUE, 2, 8 * GiB, arm=True)} == {"ARM64"}


def test_nearest_named_when_nothing_fits():
    with pytest.raises(ClusterSpecError, match=r"nearest: .*g2-standard-4") as info:
        mt.choose(CATALOGUE, 64, 512 * GiB, gpus=1, gpu_type="nvidia-l4")
    assert "worker_cpu" in str(info.value)


def test_named_types_checked():
    assert [t.name for t in mt.named(CATALOGUE, ["n2-standard-4", "n2-custom-4-8192"], "worker_vm_types", "us-east1-b")] == [
        "n2-standard-4",
        "n2-custom-4-8192",
    ]
    with pytest.raises(ClusterSpecError, match="worker_vm_types: 'n2-standard-3' is not a machine type of us-east1-b"):
        mt.named(CATALOGUE, ["n2-standard-3"], "worker_vm_types", "us-east1-b")


def test_catalogue_reads_every_page_and_is_cached(api_only):
    from coiled_gcp.options import GCPOptions
    from coiled_gcp.session import GCP

    gcp = GCP(GCPOptions())
    mt._CACHE.clear()
    before = sum(n for k, n in api_only.calls.items() if "machineTypes" in k)
    types = mt.catalogue(gcp.machine_types, gcp.project, "us-east1-c")
    mt.catalogue(gcp.machine_types, gcp.project, "us-east1-c")
    assert len(types) == len(MACHINE_TYPES)
    assert sum(n for k, n in api_only.calls.items() if "machineTypes" in k) - before >= 1
    assert all(isinstance(t.memory_mib, int) for t in types)
