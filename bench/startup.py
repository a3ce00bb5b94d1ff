"""Start-up benchmark: coiled.Cluster on the local backend against distributed.LocalCluster.

Prints, from one run that alternates the two, the median time until all four workers are
connected for

    coiled.Cluster(n_workers=4, worker_cpu=1, worker_memory="1 GiB")
    distributed.LocalCluster(n_workers=4, threads_per_worker=1)

and their ratio (target: at most 1.0; goal 0.8), then the import time of `coiled` against
`distributed` in fresh interpreters. Run with `make bench` or `python bench/startup.py [ROUNDS]`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import dask.config
from distributed import Client, LocalCluster

import coiled

N_WORKERS = 4


def time_coiled() -> float:
    start = time.perf_counter()
    cluster = coiled.Cluster(n_workers=N_WORKERS, worker_cpu=1, worker_memory="1 GiB", wait_for_workers=True)
    elapsed = time.perf_counter() - start
    assert len(cluster.scheduler_info["workers"]) == N_WORKERS
    cluster.close()
    return elapsed


def time_local_cluster() -> float:
    start = time.perf_counter()
    cluster = LocalCluster(
        n_workers=N_WORKERS, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    )
    with Client(cluster) as client:
        client.wait_for_workers(N_WORKERS)
        elapsed = time.perf_counter() - start
    cluster.close()
    return elapsed


def import_time(module: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(rounds: int = 5) -> None:
    # Four 1-CPU workers oversubscribe a 2-core machine; that is expected here.
    warnings.filterwarnings("ignore", message=".*sharing this machine")
    coiled_times, local_times = [], []
    with tempfile.TemporaryDirectory() as state, dask.config.set({"coiled.local.directory": state}):
        time_coiled()  # warm the file system caches for both, untimed
        for _ in range(rounds):
            coiled_times.append(time_coiled())
            local_times.append(time_local_cluster())
    c, l = statistics.median(coiled_times), statistics.median(local_times)
    print(f"rounds: {rounds} (alternating)")
    print(f"coiled.Cluster(n_workers=4)      median {c:.2f} s  (all: {', '.join(f'{t:.2f}' for t in coiled_times)})")
    print(f"LocalCluster(n_workers=4)        median {l:.2f} s  (all: {', '.join(f'{t:.2f}' for t in local_times)})")
    print(f"ratio coiled / LocalCluster      {c / l:.2f}   (target <= 1.0, goal 0.8)")
    i_coiled, i_dist = import_time("coiled", rounds), import_time("distributed", rounds)
    print(f"import coiled                    median {i_coiled:.2f} s (fresh interpreter)")
    print(f"import distributed               median {i_dist:.2f} s (fresh interpreter)")
    print(f"import ratio coiled / distributed {i_coiled / i_dist:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
