"""The quickstart on the AWS backend, against the offline EC2 simulator (no AWS account needed).

moto serves the EC2, SSM, S3, IAM and STS APIs on 127.0.0.1 and a runner executes each launched
instance's boot script as local processes, each node on its own loopback address. Everything the
backend does is real boto3 calls and a real Dask cluster. Run it with `make demo-aws`.
"""

import os

import dask.config

from coiled_aws.offline import OfflineEC2


def main() -> None:
    cache = os.path.join(os.path.expanduser("~"), ".cache", "coiled", "offline-env-cache")
    with OfflineEC2(env_cache=cache) as simulator:
        os.environ.pop("AWS_PROFILE", None)
        os.environ.update(simulator.environ())
        settings = {
            "coiled.backend": "aws",
            "coiled.loopback-addresses": True,
            # Offline there is no public address to detect: admit the loopback range.
            "coiled.backend-options": {"aws": {"allow_ingress_from": "127.0.0.0/8"}},
        }
        with dask.config.set(settings):
            import quickstart

            quickstart.main()


if __name__ == "__main__":
    main()
