"""The quickstart on the GCP backend, against the offline Compute Engine (no GCP project needed).

A local server plays Compute Engine, Cloud Storage and Secret Manager on 127.0.0.1, and a runner
executes each instance's startup script as local processes, each node on its own loopback
address. The backend makes real google-cloud-compute calls and forms a real Dask cluster. Run it
with `make demo-gcp`.
"""

import os

import dask.config
from coiled_gcp.offline import OfflineGCP


def main() -> None:
    cache = os.path.join(os.path.expanduser("~"), ".cache", "coiled", "offline-env-cache")
    # The stand-in's variables carry its proof that it runs: its switches are honoured only then.
    with OfflineGCP(env_cache=cache) as fake:
        os.environ.update(fake.environ())
        settings = {
            "coiled.backend": "gcp",
            "coiled.loopback-addresses": True,
            # Offline there is no public address to detect: admit the loopback range.
            "coiled.backend-options": {"gcp": {"allow_ingress_from": "127.0.0.0/8"}},
        }
        with dask.config.set(settings):
            import quickstart

            quickstart.main()


if __name__ == "__main__":
    main()
