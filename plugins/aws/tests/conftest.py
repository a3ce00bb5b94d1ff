"""One offline EC2 (moto server plus the boot-script runner) for the AWS backend's tests."""

import os

import dask.config
import pytest


@pytest.fixture(scope="module")
def offline_ec2(tmp_path_factory):
    # Per module: moto's state is per process, so a module that starts simulators of its own
    # (test_offline.py) must not find this one running.
    from coiled_aws.offline import OfflineEC2

    # Environment builds are shared between test runs: the first build takes a while.
    cache = os.path.join(os.path.expanduser("~"), ".cache", "coiled", "offline-env-cache")
    simulator = OfflineEC2(workdir=str(tmp_path_factory.mktemp("offline-ec2")), env_cache=cache)
    simulator.start()
    saved = {key: os.environ.get(key) for key in simulator.environ()}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(simulator.environ())
    with dask.config.set({"coiled.loopback-addresses": True}):
        yield simulator
    simulator.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
