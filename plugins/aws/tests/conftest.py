"""One offline EC2 (moto server plus the boot-script runner) for the AWS backend's tests."""

import contextlib
import os

import pytest

from coiled_core.testing.environment import offline_environment


@contextlib.contextmanager
def running_offline_ec2(workdir, env_cache):
    """An offline EC2 whose credentials and endpoint are this process's while it runs."""
    from coiled_aws.offline import OfflineEC2

    simulator = OfflineEC2(workdir=str(workdir), env_cache=env_cache)
    simulator.start()
    try:
        with offline_environment(simulator.environ(), unset=("AWS_PROFILE",)):
            yield simulator
    finally:
        simulator.stop()


@pytest.fixture(scope="module")
def offline_ec2(tmp_path_factory):
    # Per module: moto's state is per process, so a module that starts simulators of its own
    # (test_aws_offline.py) must not find this one running.
    # Environment builds are shared between test runs: the first build takes a while.
    cache = os.path.join(os.path.expanduser("~"), ".cache", "coiled", "offline-env-cache")
    with running_offline_ec2(tmp_path_factory.mktemp("offline-ec2"), cache) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def uncached_ec2(tmp_path_factory):
    """An offline EC2 without a shared build cache: each instance builds or fetches its own
    environments, as real machines do (test_env_packs.py)."""
    with running_offline_ec2(tmp_path_factory.mktemp("offline-ec2"), env_cache=False) as simulator:
        yield simulator
