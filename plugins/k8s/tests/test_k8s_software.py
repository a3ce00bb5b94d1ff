"""A software environment's pip packages are installed at pod start, into that pod only."""

import os
import subprocess
from pathlib import Path

import pytest
from coiled_k8s.offline.images import container_layer, dask_image_environment
from coiled_k8s.options import default_image
from coiled_k8s.resources import BOOT

import coiled
from coiled_core.testing.wheels import tiny_wheel

PRINT_TINY = 'exec python -c "import coiled_tiny_pkg; print(coiled_tiny_pkg.VALUE, coiled_tiny_pkg.__file__)"'


def _boot(layer: str, packages: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """The container command of the pods, ending in a report instead of the node agent."""
    script = BOOT.replace('exec python -m coiled_core.node "$0"', PRINT_TINY)
    assert script != BOOT
    (tmp_path / "packages").mkdir(exist_ok=True)
    env = {"PATH": f"{layer}/bin:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "EXTRA_PIP_PACKAGES": packages, "COILED_K8S_PACKAGES": str(tmp_path / "packages"), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "UV_OFFLINE": "1",
           "PIP_NO_INDEX": "1", "UV_CACHE_DIR": str(tmp_path / "uv-cache")}
    return subprocess.run(["sh", "-c", script, "/etc/coiled/node/worker.json"], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_the_container_command_installs_requirements_with_spaces_into_the_pods_own_directory(tmp_path, installer):
    """The pods run as a user that cannot write the image's Python: the packages go to the pod's
    emptyDir ($COILED_K8S_PACKAGES) and are found from there."""
    image = dask_image_environment(tmp_path / "image")
    if installer == "uv" and not os.path.exists(f"{image}/bin/uv"):
        pytest.skip("uv is not installed")
    layer = container_layer(image, tmp_path / "layer")
    if installer == "pip":  # an image without uv
        Path(layer, "bin", "uv").unlink(missing_ok=True)
    wheel = tiny_wheel(tmp_path)
    # One requirement per line; this one holds spaces (a direct reference), which word splitting breaks.
    done = _boot(layer, f"coiled-tiny-pkg @ {wheel.as_uri()}", tmp_path)
    assert done.returncode == 0, done.stderr
    value, module = done.stdout.split()[-2:]
    assert value == "tiny" and Path(module).is_relative_to(tmp_path / "packages")
    # Neither the image nor the container's own environment was written.
    for python in (f"{image}/bin/python", f"{layer}/bin/python"):
        check = subprocess.run([python, "-c", "import coiled_tiny_pkg"], capture_output=True)
        assert check.returncode != 0


def test_a_failed_install_fails_the_container_with_the_installers_message(tmp_path):
    layer = container_layer(dask_image_environment(tmp_path / "image"), tmp_path / "layer")
    done = _boot(layer, f"coiled-tiny-pkg @ {(tmp_path / 'missing.whl').as_uri()}", tmp_path)
    assert done.returncode != 0
    assert "missing.whl" in done.stderr + done.stdout


def test_a_cluster_with_a_pip_software_environment_has_the_packages_on_every_pod(offline_k8s, k8s_options, tmp_path):
    """In a namespace that enforces the restricted Pod Security Standard: the pods run as a user
    that cannot write the image, and install into their own directory."""
    from coiled_k8s.offline.podsecurity import LABEL_ENFORCE
    from distributed import Client

    namespace = "dask-restricted"
    offline_k8s.create_namespace(namespace, {LABEL_ENFORCE: "restricted"})
    wheel = tiny_wheel(tmp_path)
    coiled.create_software_environment(name="k8s-tiny", pip=[f"coiled-tiny-pkg @ {wheel.as_uri()}"])
    cluster = coiled.Cluster(name="k8s-pip", backend="k8s", backend_options={**k8s_options, "namespace": namespace},
                             software="k8s-tiny", n_workers=1, worker_cpu=1, worker_memory="1 GiB")
    try:
        pods, *_ = offline_k8s.store.list("pods", namespace)
        packages = {p["metadata"]["name"]: next(e["value"] for e in p["spec"]["containers"][0]["env"]
                                                if e["name"] == "EXTRA_PIP_PACKAGES")
                    for p in pods if p["metadata"]["name"].startswith("k8s-pip-")}
        assert len(packages) == 2
        # The client's distributed is the default image's: not installed again at pod start.
        assert set(packages.values()) == {f"coiled-tiny-pkg @ {wheel.as_uri()}"}

        def tiny():
            import coiled_tiny_pkg

            return coiled_tiny_pkg.VALUE

        with Client(cluster) as client:
            assert list(client.run(tiny).values()) == ["tiny"]
            assert client.run_on_scheduler(tiny) == "tiny"
    finally:
        cluster.shutdown()
        coiled.delete_software_environment("k8s-tiny")
    # Each pod installed into its own layer: the image (every later pod's start) is as it was.
    image = offline_k8s.images[default_image()]
    assert subprocess.run([f"{image}/bin/python", "-c", "import coiled_tiny_pkg"], capture_output=True).returncode != 0
