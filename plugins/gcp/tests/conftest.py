"""One offline Compute Engine for the GCP backend's tests: a REST fake plus the boot runner."""

import contextlib
import os

import dask.config
import pytest


@contextlib.contextmanager
def running_offline_gcp(**kwargs):
    """An offline Compute Engine whose endpoint and token are this process's while it runs."""
    from coiled_gcp.offline import OfflineGCP

    fake = OfflineGCP(**kwargs).start()
    saved = {key: os.environ.get(key) for key in fake.environ()}
    os.environ.update(fake.environ())
    try:
        with dask.config.set({"coiled.loopback-addresses": True}):
            yield fake
    finally:
        fake.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def offline_gcp(tmp_path_factory):
    # Environment builds are shared with the other offline clouds' tests and across runs.
    cache = os.path.join(os.path.expanduser("~"), ".cache", "coiled", "offline-env-cache")
    with running_offline_gcp(workdir=tmp_path_factory.mktemp("offline-gce"), env_cache=cache) as fake:
        yield fake


@pytest.fixture
def api_only(offline_gcp):
    """The same fake with no machine booting (provisioning tests), faults cleared after."""
    offline_gcp.run_scripts = False
    try:
        yield offline_gcp
    finally:
        offline_gcp.run_scripts = True
        offline_gcp.clear_faults()
