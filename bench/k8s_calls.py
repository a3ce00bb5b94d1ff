"""Kubernetes API calls and wall time to create 1, 10 and 100 workers, on the offline Kubernetes.

Two parts:

* **Calls** (the kubelet runs nothing: pods go Running without processes): for each size, the
  API calls of ``claim_name`` + ``provision`` by verb and resource, and their wall time; then those
  of ``teardown``. Only pod creation grows with N: the core API has no batch create for pods, so
  the backend issues the per-pod creates concurrently (16 at a time) rather than through a
  ReplicaSet, which would need a controller and could not delete exactly the retired workers.
  The worker pods are created in the same wave as the scheduler's: nothing waits for it.
* **Start to ready** (pods run for real, TLS on): ``coiled.Cluster(n_workers=N)`` until every
  worker joined, for 1 and 10 workers (100 real node agents do not fit two cores; set
  ``K8S_BENCH_REAL_SIZES=1,10,100`` on a bigger machine).

Run with ``python bench/k8s_calls.py``; it prints figures, it asserts nothing.
"""

from __future__ import annotations

import collections
import os
import tempfile
import time

import dask.config

SIZES = (1, 10, 100)


def count_calls() -> None:
    from coiled_k8s.offline import OfflineKubernetes

    from coiled_core.plugins import load_backend
    from coiled_core.spec import resolve_cluster_spec

    with OfflineKubernetes(tempfile.mkdtemp(prefix="k8s-bench-"), run_processes=False, max_pods=1000) as offline:
        backend = load_backend("k8s")
        options = backend.validate_options({"kubeconfig": offline.kubeconfig})
        results = {}
        for n in (1, *SIZES):  # the first run warms the client and the agent bundle
            spec = resolve_cluster_spec({"name": f"bench-{n}-{time.monotonic_ns() % 10**6}", "n_workers": n,
                                         "worker_cpu": 1, "worker_memory": "1 GiB", "security": False,
                                         "backend": "k8s", "backend_options": options.model_dump()})
            offline.api.calls.clear()
            start = time.perf_counter()
            backend.claim_name(spec.name, options)
            record = backend.provision(spec, options)
            created = time.perf_counter() - start
            create_calls = collections.Counter(offline.api.calls)
            offline.api.calls.clear()
            start = time.perf_counter()
            backend.teardown(record, options)
            results[n] = (created, create_calls, time.perf_counter() - start, collections.Counter(offline.api.calls),
                          len(record.workers))

    def table(title: str, column: int) -> None:
        kinds = sorted({k for r in results.values() for k in r[column]})
        print(f"\n{title}\n{'call':40} " + " ".join(f"{f'n={n}':>7}" for n in SIZES))
        for kind in kinds:
            _, verb, group, resource = kind
            label = f"{verb} {group + '/' if group else ''}{resource}"
            print(f"{label:40} " + " ".join(f"{results[n][column][kind]:>7}" for n in SIZES))
        print(f"{'total':40} " + " ".join(f"{sum(results[n][column].values()):>7}" for n in SIZES))
        print(f"{'wall time (s)':40} " + " ".join(f"{results[n][column - 1]:>7.2f}" for n in SIZES))

    table("claim_name + provision (pods not run)", 1)
    table("teardown (pods not run)", 3)
    print(f"{'workers in the record':40} " + " ".join(f"{results[n][4]:>7}" for n in SIZES))


def start_to_ready() -> None:
    from coiled_k8s.offline import OfflineKubernetes

    import coiled

    sizes = [int(n) for n in os.environ.get("K8S_BENCH_REAL_SIZES", "1,10").split(",")]
    print("\nstart to ready, processes run (TLS on)")
    with OfflineKubernetes(tempfile.mkdtemp(prefix="k8s-bench-")) as offline:
        options = {"kubeconfig": offline.kubeconfig}
        for n in sizes:
            start = time.perf_counter()
            cluster = coiled.Cluster(name=f"bench-ready-{n}", backend="k8s", backend_options=options, n_workers=n,
                                     worker_cpu=1, worker_memory="1 GiB", wait_for_workers=True, timeout="10m")
            ready = time.perf_counter() - start
            start = time.perf_counter()
            cluster.shutdown()
            print(f"  n={n:<4} ready {ready:6.2f}s   shutdown {time.perf_counter() - start:6.2f}s")


def main() -> None:
    from coiled_core.testing.standin import standin_proof

    os.environ["DASK_COILED__LOOPBACK_ADDRESSES"] = "true"
    with standin_proof() as proof, dask.config.set({"coiled.loopback-addresses": True, "coiled.k8s.log_directory": tempfile.mkdtemp()}):
        os.environ.update(proof.environ())
        count_calls()
        start_to_ready()


if __name__ == "__main__":
    main()
