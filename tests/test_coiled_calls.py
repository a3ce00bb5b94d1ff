"""Calls written the way Coiled's current documentation and examples write them.

Each is run on the local backend without starting anything (``coiled.Cluster`` is swapped for
``coiled.check_cluster``, which checks a call exactly as ``Cluster`` does), and must either be
accepted or fail with a ``CoiledError`` that names the parameter the user wrote. The same calls
run against the offline AWS backend in ``plugins/aws/tests``.
"""

from __future__ import annotations

import types
import warnings

import pytest

import coiled
from coiled import ClusterSpecError, CoiledError

OK = None

#: (call as a user writes it, None if accepted / the parameter an error must name).
CLUSTER_CALLS = [
    ('coiled.Cluster(n_workers=15, worker_memory="64 GiB")', OK),
    ('coiled.Cluster(n_workers=15, worker_vm_types=["m7i.xlarge"])', OK),
    ('coiled.Cluster(n_workers=15, worker_vm_types="m7i.xlarge")', OK),
    ("coiled.Cluster(n_workers=[2, 10])", OK),
    ("coiled.Cluster(n_workers=[1, 2, 10])", OK),
    ('coiled.Cluster(n_workers=10, spot_policy="spot_with_fallback", use_best_zone=True)', OK),
    ('coiled.Cluster(n_workers=10, compute_purchase_option="spot")', OK),
    ('coiled.Cluster(region="us-east-2")', OK),
    ('coiled.Cluster(n_workers=4, worker_gpu=1, worker_gpu_type="nvidia-tesla-t4")', OK),
    ("coiled.Cluster(n_workers=4, arm=True)", OK),
    ('coiled.Cluster(tags={"team": "data", "project": "forecast"})', OK),
    ('coiled.Cluster(worker_disk_size=200, scheduler_disk_size="100 GiB")', OK),
    ('coiled.Cluster(idle_timeout="2 hours")', OK),
    ('coiled.Cluster(name="production", shutdown_on_close=False)', OK),
    ('coiled.Cluster(environ={"MY_SETTING": 1, "DEBUG": True})', OK),
    ('coiled.Cluster(package_sync=True, package_sync_ignore=["torch"])', OK),
    ('coiled.Cluster(package_sync_strict=True)', OK),
    ('coiled.Cluster(worker_cpu=4, worker_memory="16GiB", scheduler_cpu=2, scheduler_memory="8GiB")', OK),
    ("coiled.Cluster(worker_cpu=[2, 8])", OK),
    ('coiled.Cluster(worker_memory=["8 GiB", "32 GiB"])', OK),
    ('coiled.Cluster(workspace="my-team")', OK),
    ('coiled.Cluster(account="my-team")', OK),
    ('coiled.Cluster(allow_ingress_from="me")', OK),
    ("coiled.Cluster(allow_ssh=True)", OK),
    ('coiled.Cluster(scheduler_vm_types="m7i.large")', OK),
    ("coiled.Cluster(n_workers=2, worker_gpu=1, scheduler_gpu=True)", OK),
    ('coiled.Cluster(no_client_timeout="30 minutes")', OK),
    ("coiled.Cluster(wait_for_workers=True)", OK),
    ("coiled.Cluster(wait_for_workers=0.5)", OK),
    ('coiled.Cluster(name="My_Cluster")', OK),
    ("coiled.Cluster(timeout=600)", OK),
    ('coiled.Cluster(scheduler_options={"idle_timeout": "1h"})', OK),
    ('coiled.Cluster(worker_options={"nthreads": 2})', OK),
    ("coiled.Cluster(n_workers=4, show_widget=False)", OK),
    ('coiled.Cluster(software="docs-pip-env")', OK),
    ('coiled.Cluster(configuration="docs-config")', OK),
    ("coiled.Cluster(10)", "n_workers"),
    ('coiled.Cluster(n_workers=10, worker_vm_type="m5.large")', "worker_vm_types"),
    ('coiled.Cluster(spot_policy="spot-with-fallback")', "spot_policy"),
    ('coiled.Cluster(container="ghcr.io/dask/dask:latest")', "container"),
    ('coiled.Cluster(compute_purchase_option="spot", spot_policy="on-demand")', "spot_policy"),
    ('coiled.Cluster(worker_memory="lots")', "worker_memory"),
    ('coiled.Cluster(n_workers=[10, 2])', "n_workers"),
    ('coiled.Cluster(software="no-such-env")', "no-such-env"),
]

OTHER_CALLS = [
    ('coiled.create_software_environment(name="docs-pip-env", pip=["dask[complete]", "xarray", "s3fs"])', OK),
    ('coiled.create_software_environment(name="docs-conda-env", conda={"channels": ["conda-forge"], "dependencies": ["python=3.11", "dask", "xarray"]})', OK),
    ('coiled.create_software_environment(name="docs-image", container="ghcr.io/dask/dask:latest")', OK),
    ('coiled.create_cluster_configuration(name="docs-config", software="docs-pip-env", worker_memory="16 GiB", n_workers=4)', OK),
    ("coiled.list_clusters()", OK),
    ('coiled.delete_cluster(name="no-such-cluster")', "no-such-cluster"),
]


def _run(call: str):
    """Run ``call`` with ``coiled.Cluster`` checking instead of starting."""
    facade = types.SimpleNamespace(**{name: getattr(coiled, name) for name in dir(coiled) if not name.startswith("_")})
    facade.Cluster = coiled.check_cluster
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keywords without meaning here warn; that is tested elsewhere
        return eval(call, {"coiled": facade})


@pytest.fixture(scope="module", autouse=True)
def environments_and_configurations():
    for call, _ in OTHER_CALLS[:4]:
        _run(call)
    yield
    coiled.delete_cluster_configuration("docs-config")
    for name in ("docs-pip-env", "docs-conda-env", "docs-image"):
        coiled.delete_software_environment(name)


def test_there_are_at_least_forty_calls():
    assert len(CLUSTER_CALLS) + len(OTHER_CALLS) >= 40


@pytest.mark.parametrize("call, parameter", CLUSTER_CALLS + OTHER_CALLS, ids=[c for c, _ in CLUSTER_CALLS + OTHER_CALLS])
def test_a_coiled_call_is_accepted_or_names_the_parameter(call, parameter):
    if parameter is OK:
        _run(call)
        return
    with pytest.raises(CoiledError) as info:
        _run(call)
    assert parameter in str(info.value), str(info.value)
    assert not isinstance(info.value, TypeError) or isinstance(info.value, ClusterSpecError)
