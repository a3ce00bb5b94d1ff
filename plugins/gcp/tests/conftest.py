"""One offline Compute Engine for the GCP backend's tests: a REST fake plus the boot runner."""

import contextlib
import os

import pytest

from coiled_core.testing.environment import offline_environment


@contextlib.contextmanager
def running_offline_gcp(**kwargs):
    """An offline Compute Engine whose endpoint and token are this process's while it runs."""
    from coiled_gcp.offline import OfflineGCP

    fake = OfflineGCP(**kwargs).start()
    try:
        with offline_environment(fake.environ()):
            yield fake
    finally:
        fake.stop()
    # Every reply matched Google's description of it (the stand-in did not drift), and no
    # request was one the real service (or its IAM) refuses but those the tests made on purpose
    # (and forgot).
    assert not fake.drift, fake.drift
    assert not fake.refused, f"requests the real service refuses: {fake.refused}"
    # No node was refused what it needs (IAM's 403s a node may retry or shrug off).
    assert not fake.denied, f"requests IAM refused a node: {fake.denied}"


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
