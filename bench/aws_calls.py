"""AWS API calls and wall time to provision 1, 10 and 100 workers, against moto.

Prints, for each size, the number of AWS API calls by kind and the time ``provision`` took
(the boot scripts are not run: this measures the control plane only). Goals: no call whose count
grows with the number of workers, and no waiting for the scheduler to boot before the workers are
launched (both are launched in one wave). Run with `python bench/aws_calls.py`.
"""

from __future__ import annotations

import collections
import os
import time

import botocore.client
import dask.config

from coiled_aws.offline import OfflineEC2

SIZES = (1, 10, 100)


def main() -> None:
    calls: collections.Counter[str] = collections.Counter()
    original = botocore.client.BaseClient._make_api_call

    def counting(self, operation_name, api_params):
        calls[f"{self.meta.service_model.service_name}:{operation_name}"] += 1
        return original(self, operation_name, api_params)

    with OfflineEC2(run_scripts=False) as simulator:
        os.environ.pop("AWS_PROFILE", None)
        os.environ.update(simulator.environ())
        from coiled_core.plugins import load_backend
        from coiled_core.spec import resolve_cluster_spec

        backend = load_backend("aws")
        options = backend.validate_options({"allow_ingress_from": "127.0.0.1/32"})
        botocore.client.BaseClient._make_api_call = counting
        try:
            results = {}
            with dask.config.set({"coiled.loopback-addresses": True}):
                # The first provision fills the per-region caches (instance types, the bucket).
                for n in (1, *SIZES):
                    spec = resolve_cluster_spec(
                        {"name": f"bench-{n}-{time.monotonic_ns() % 10**6}", "n_workers": n, "worker_cpu": 2,
                         "worker_memory": "8 GiB", "security": False, "backend_options": options.model_dump()}
                    )
                    calls.clear()
                    start = time.perf_counter()
                    record = backend.provision(spec, options)
                    elapsed = time.perf_counter() - start
                    results[n] = (elapsed, dict(calls), len(record.workers))
                    backend.teardown(record)
        finally:
            botocore.client.BaseClient._make_api_call = original

    kinds = sorted({k for _, c, _ in results.values() for k in c})
    print(f"{'call':45} " + " ".join(f"{f'n={n}':>7}" for n in SIZES))
    for kind in kinds:
        print(f"{kind:45} " + " ".join(f"{results[n][1].get(kind, 0):>7}" for n in SIZES))
    print(f"{'total calls':45} " + " ".join(f"{sum(results[n][1].values()):>7}" for n in SIZES))
    print(f"{'workers launched':45} " + " ".join(f"{results[n][2]:>7}" for n in SIZES))
    print(f"{'provision wall time (s)':45} " + " ".join(f"{results[n][0]:>7.2f}" for n in SIZES))
    growing = [k for k in kinds if results[SIZES[-1]][1].get(k, 0) > results[SIZES[0]][1].get(k, 0)]
    print("calls whose count grows with N:", ", ".join(growing) if growing else "none")


if __name__ == "__main__":
    main()
