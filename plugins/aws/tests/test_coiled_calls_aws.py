"""Coiled calls as its documentation writes them, checked against the offline AWS backend.

The calls are those of the project's ``tests/test_coiled_calls.py`` (run there on the local
backend), each run here with ``coiled.check_cluster(..., backend="aws")``: every check a real
``coiled.Cluster`` makes, the backend's preflight included (credentials, region, instance types,
image, subnet), without creating anything. Each must be accepted, or refused with a
``CoiledError`` naming the parameter the user wrote. Calls whose answer differs on AWS, and calls
only meaningful on AWS, are listed below.
"""

from __future__ import annotations

import functools
import importlib.util
import types
import warnings
from pathlib import Path

import pytest

import coiled
from coiled import ClusterSpecError, CoiledError
from coiled_core import ingress

from coiled_aws import network

pytestmark = pytest.mark.usefixtures("offline_ec2")

OK = None
#: The offline EC2's region (AWS_DEFAULT_REGION); keywords may name another.
OPTIONS: dict = {}
#: What "me" (allow_ingress_from's default) resolves to here: no address lookup offline.
CLIENT_ADDRESS = "198.51.100.7"

_REFERENCE = Path(__file__).resolve().parents[3] / "tests" / "test_coiled_calls.py"


def _reference_calls() -> tuple[list, list]:
    """CLUSTER_CALLS and OTHER_CALLS of the project's own list, loaded from its file (not a package)."""
    if not _REFERENCE.exists():
        return [], []
    spec = importlib.util.spec_from_file_location("coiled_calls_reference", _REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.CLUSTER_CALLS), list(module.OTHER_CALLS)


REFERENCE_CLUSTER_CALLS, REFERENCE_OTHER_CALLS = _reference_calls()

#: Where AWS answers differently from the local backend.
AWS_ANSWERS = {
    # The AWS backend runs containers (docker on the node, see coiled_aws.bootstrap).
    'coiled.Cluster(container="ghcr.io/dask/dask:latest")': OK,
}

#: Calls whose answer only AWS gives: (call, None if accepted / texts the error must contain).
AWS_CALLS = [
    ('coiled.Cluster(region="us-east-2", worker_vm_types=["m7i.xlarge", "m6i.xlarge"])', OK),
    ('coiled.Cluster(region="us-central1")', ["region", "'us-central1' is not an AWS region", "Google Cloud"]),
    ('coiled.Cluster(region="us-east-9")', ["region", "'us-east-9' is not an AWS region", "did you mean"]),
    ('coiled.Cluster(worker_vm_types=["m7i.xlarg"])', ["worker_vm_types", "'m7i.xlarg'", "did you mean 'm7i.xlarge'"]),
    ('coiled.Cluster(worker_vm_types="n1-standard-4")', ["worker_vm_types", "Google Cloud machine type"]),
    ('coiled.Cluster(scheduler_vm_types=["m7i.huge"])', ["scheduler_vm_types", "'m7i.huge'"]),
    ('coiled.Cluster(worker_vm_types=["m7g.xlarge"])', OK),  # arm64 types: an arm64 image
    ('coiled.Cluster(worker_vm_types=["m7g.xlarge", "m7i.xlarge"])', ["worker_vm_types", "architecture"]),
    ('coiled.Cluster(arm=True, worker_vm_types=["m7i.xlarge"])', ["arm", "'m7i.xlarge'", "arm64"]),
    ('coiled.Cluster(arm=False, worker_vm_types=["m7g.xlarge"])', ["arm", "'m7g.xlarge'", "x86_64"]),
    ("coiled.Cluster(worker_disk_size=4)", ["worker_disk_size", "at least 8"]),
    ("coiled.Cluster(scheduler_disk_size=20000)", ["scheduler_disk_size", "at most 16384"]),
    ('coiled.Cluster(tags={"coiled:cluster": "other"})', ["tags", "coiled:"]),
    ('coiled.Cluster(tags={"cost centre": "a,b"})', ["tags", "','"]),
    ('coiled.Cluster(allow_ingress_from="everyone")', OK),
    ('coiled.Cluster(allow_ingress_from="203.0.113.0/24", allow_ssh=True)', OK),
    ('coiled.Cluster(allow_ingress_from="my laptop")', ["allow_ingress_from", "'my laptop'", "'me'"]),
    ('coiled.Cluster(use_best_zone=True, backend_options={"zone": "us-east-1a"})', ["use_best_zone", "zone"]),
    ('coiled.Cluster(worker_cpu=[2, 8], worker_memory=["4 GiB", "8 GiB"])', OK),
    ('coiled.Cluster(worker_cpu=[1, 1], worker_memory=["300 GiB", "310 GiB"])', ["worker", "Nearest"]),
    ('coiled.Cluster(container="ghcr.io/dask/dask:latest", software="docs-pip-env")', ["container", "software"]),
    ('coiled.Cluster(container="Not An Image")', ["container", "'Not An Image'"]),
    (
        'coiled.Cluster(region="us-east-2", backend_options={"region": "us-west-2"})',
        ["region='us-east-2'", "backend_options", "'us-west-2'"],
    ),
    (
        'coiled.Cluster(worker_disk_size=100, backend_options={"worker_root_volume_gib": 200})',
        ["worker_disk_size=100", "backend_options", "worker_root_volume_gib"],
    ),
    ('coiled.Cluster(software="docs-conda-env")', ["software", "docs-conda-env'", "conda environments are not built on AWS yet"]),
    ('coiled.Cluster(software="aws-post-build")', OK),  # run on the node after the venv is built
    ('coiled.Cluster(software="docs-image")', OK),
    ('coiled.list_clusters(backend="aws")', OK),
    ('coiled.delete_cluster(name="No_Such-Cluster", backend="aws")', ["No_Such-Cluster"]),
]


def _cluster(*args, **kwargs):
    """``coiled.Cluster`` on the AWS backend, checking instead of starting."""
    kwargs.setdefault("backend", "aws")
    kwargs["backend_options"] = {**OPTIONS, **(kwargs.get("backend_options") or {})}
    return coiled.check_cluster(*args, **kwargs)


def _run(call: str):
    facade = types.SimpleNamespace(**{name: getattr(coiled, name) for name in dir(coiled) if not name.startswith("_")})
    facade.Cluster = _cluster
    facade.delete_cluster = functools.partial(coiled.delete_cluster, backend="aws")
    facade.list_clusters = functools.partial(coiled.list_clusters, backend="aws")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keywords without meaning on AWS warn: tested below
        return eval(call, {"coiled": facade})


def _expected(call: str, answer):
    return AWS_ANSWERS.get(call, answer)


CALLS = [(c, _expected(c, a)) for c, a in REFERENCE_CLUSTER_CALLS + REFERENCE_OTHER_CALLS] + AWS_CALLS


@pytest.fixture(scope="module", autouse=True)
def environments_and_configurations():
    """The software environments and configuration the reference calls name, and no address
    lookup: 'me' is :data:`CLIENT_ADDRESS`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingress, "public_address", lambda: CLIENT_ADDRESS)
        made = [call for call, _ in REFERENCE_OTHER_CALLS if ".create_" in call]
        for call in made:
            _run(call)
        coiled.create_software_environment(name="aws-post-build", pip=["dask"], post_build=["echo built"])
        yield
        coiled.delete_software_environment("aws-post-build")
        if any("create_cluster_configuration" in c for c in made):
            coiled.delete_cluster_configuration("docs-config")
        for name in ("docs-pip-env", "docs-conda-env", "docs-image"):
            if any(f'"{name}"' in c for c in made):
                coiled.delete_software_environment(name)


def test_the_reference_calls_are_all_here():
    assert len(REFERENCE_CLUSTER_CALLS) + len(REFERENCE_OTHER_CALLS) >= 40, f"{_REFERENCE} not found or shrunk"
    assert set(AWS_ANSWERS) <= {c for c, _ in REFERENCE_CLUSTER_CALLS}, "an AWS answer for a call no longer listed"


@pytest.mark.parametrize("call, expected", CALLS, ids=[c for c, _ in CALLS])
def test_a_coiled_call_on_aws_is_accepted_or_names_the_parameter(call, expected):
    if expected is OK:
        _run(call)
        return
    with pytest.raises(CoiledError) as info:
        _run(call)
    message = str(info.value)
    for text in [expected] if isinstance(expected, str) else expected:
        assert text in message, message
    assert not isinstance(info.value, TypeError) or isinstance(info.value, ClusterSpecError)


def test_keywords_land_in_the_aws_options():
    spec, options = _cluster(
        region="us-east-2",
        worker_vm_types="m7i.xlarge",
        scheduler_vm_types=["m7i.large"],
        compute_purchase_option="spot_with_fallback",
        tags={"team": "data", "run": 7},
        arm=False,
        worker_disk_size="120 GiB",
        scheduler_disk_size=60,
        allow_ssh=True,
        allow_ingress_from="me",
        use_best_zone=True,
        scheduler_gpu=False,
    )
    assert options.region == "us-east-2"
    assert options.instance_types == ["m7i.xlarge"] and options.scheduler_instance_types == ["m7i.large"]
    assert options.spot_policy == "spot_with_fallback"
    assert options.tags == {"team": "data", "run": "7"}
    assert options.arm is False and options.scheduler_gpu is False
    assert (options.volume_gib("worker"), options.volume_gib("scheduler")) == (120, 60)
    assert options.allow_ssh and options.use_best_zone and options.allow_ingress_from == "me"
    # What the cluster is made from (and describe reads back) holds them as options.
    assert spec.backend_options["instance_types"] == ["m7i.xlarge"]
    assert network.client_cidr(options) == f"{CLIENT_ADDRESS}/32"
    assert network.client_cidr(_cluster(allow_ingress_from="everyone")[1]) == "0.0.0.0/0"


def test_a_keyword_without_meaning_on_aws_warns_once_naming_it():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _cluster(n_workers=1, worker_gpu=1, worker_gpu_type="nvidia-tesla-t4", region="us-east-1", tags={"a": "b"})
    ignored = [w for w in caught if "no meaning on the 'aws' backend" in str(w.message)]
    assert len(ignored) == 1, [str(w.message) for w in caught]
    message = str(ignored[0].message)
    assert "worker_gpu_type" in message
    for mapped in ("region", "tags"):
        assert mapped not in message.split(":")[0]


def test_a_keyword_and_backend_options_that_disagree_name_both():
    with pytest.raises(ClusterSpecError) as info:
        _cluster(spot_policy="spot", backend_options={"spot_policy": "on-demand"})
    message = str(info.value)
    assert "spot_policy='spot'" in message and "backend_options" in message and "'on-demand'" in message
    # The same value both ways is fine.
    _cluster(tags={"team": "data"}, backend_options={"tags": {"team": "data"}})
