"""Compute Engine API calls and wall time to create 1, 10 and 100 workers, on the offline
Compute Engine with no machine booting (``run_scripts=False``).

For each size: the calls of ``claim_name`` + ``provision`` by method and path, and their wall
time, then those of ``teardown``. Creation is flat in N: every worker goes in one ``bulkInsert``
in the same wave as the scheduler (its internal address is reserved first), and nothing waits
for the scheduler to boot. Teardown deletes instances one call each (Compute Engine has no batch
delete), 16 at a time.

Run with ``python bench/gcp_calls.py``; it prints figures, it asserts nothing.
"""

from __future__ import annotations

import collections
import os
import re
import time

import dask.config

SIZES = (1, 10, 100)


def _kind(key: str) -> str:
    key = re.sub(r"/projects/[^/]+", "/projects/P", key)
    key = re.sub(r"/zones/[^/]+", "/zones/Z", key)
    key = re.sub(r"/regions/[^/]+", "/regions/R", key)
    key = re.sub(r"/(instances|firewalls|addresses|secrets|o|b)/(?!bulkInsert)[^/:]+", r"/\1/X", key)
    return key


def main() -> None:
    from coiled_gcp.offline import OfflineGCP

    from coiled_core.plugins import load_backend
    from coiled_core.spec import resolve_cluster_spec

    with OfflineGCP(run_scripts=False) as fake:
        os.environ.update(fake.environ())
        backend = load_backend("gcp")
        options = backend.validate_options({"allow_ingress_from": "127.0.0.1/32"})
        results = {}
        with dask.config.set({"coiled.loopback-addresses": True}):
            for n in (1, *SIZES):  # the first run warms the SDK import and the agent bundle
                spec = resolve_cluster_spec({"name": f"bench-{n}-{time.monotonic_ns() % 10**6}", "n_workers": n, "worker_cpu": 1,
                                             "worker_memory": "2 GiB", "security": False})
                fake.calls.clear()
                start = time.perf_counter()
                backend.claim_name(spec.name, options)
                record = backend.provision(spec, options)
                created = time.perf_counter() - start
                create_calls = collections.Counter({_kind(k): v for k, v in fake.calls.items()})
                fake.calls.clear()
                start = time.perf_counter()
                backend.teardown(record, options)
                removed = time.perf_counter() - start
                teardown_calls: collections.Counter = collections.Counter()
                for k, v in fake.calls.items():
                    teardown_calls[_kind(k)] += v
                results[n] = (created, create_calls, removed, teardown_calls, len(record.workers))

    def table(title: str, column: int) -> None:
        kinds = sorted({k for r in results.values() for k in r[column]})
        print(f"\n{title}\n{'call':70} " + " ".join(f"{f'n={n}':>7}" for n in SIZES))
        for kind in kinds:
            print(f"{kind[:70]:70} " + " ".join(f"{results[n][column][kind]:>7}" for n in SIZES))
        print(f"{'total':70} " + " ".join(f"{sum(results[n][column].values()):>7}" for n in SIZES))
        print(f"{'wall time (s)':70} " + " ".join(f"{results[n][column - 1]:>7.2f}" for n in SIZES))

    table("claim_name + provision (machines not booted)", 1)
    table("teardown", 3)
    print(f"{'workers in the record':70} " + " ".join(f"{results[n][4]:>7}" for n in SIZES))


if __name__ == "__main__":
    main()
