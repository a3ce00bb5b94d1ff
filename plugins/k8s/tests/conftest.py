"""One offline Kubernetes (API fake and process kubelet) for the whole test session.

The client is held to the Role in docs/rbac.yaml, so every test also proves that Role enough.
"""

from pathlib import Path

import pytest
import yaml

from coiled_core.testing.environment import offline_environment

RBAC = Path(__file__).parents[1] / "docs" / "rbac.yaml"


def client_rules():
    """The rules of the client Role in the docs."""
    roles = [doc for doc in yaml.safe_load_all(RBAC.read_text()) if doc]
    return next(role["rules"] for role in roles if role["metadata"]["name"] == "coiled-k8s-client")


@pytest.fixture(scope="session")
def offline_k8s_server(tmp_path_factory):
    from coiled_k8s.offline import OfflineKubernetes

    with OfflineKubernetes(tmp_path_factory.mktemp("offline-k8s"), admin_rules=client_rules()) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def offline_k8s(offline_k8s_server):
    """The session's offline Kubernetes, with loopback addresses on for this module only (the
    rest of the project's suite runs in the same session)."""
    kept = str(offline_k8s_server.workdir / "kept-logs")
    # Child processes (the contract suite's other "sessions") map addresses and keep logs alike.
    with offline_environment({"DASK_COILED__LOOPBACK_ADDRESSES": "true", "DASK_COILED__K8S__LOG_DIRECTORY": kept},
                             config={"coiled.k8s.log_directory": kept}):
        yield offline_k8s_server


@pytest.fixture
def k8s_options(offline_k8s):
    return {"kubeconfig": offline_k8s.kubeconfig}
