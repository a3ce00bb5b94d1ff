"""The reference's simple example on the local backend.

Creates a cluster of five workers, connects a client, computes with dask.array and
dask.dataframe, prints the dashboard link and the results, and shuts everything down.
Run it with `make demo`.
"""

import dask.array as da
import dask.dataframe as dd
import pandas as pd
from dask.distributed import Client

import coiled


def main() -> None:
    # Small workers so that five of them fit on a laptop; drop the sizes to get the defaults.
    cluster = coiled.Cluster(n_workers=5, worker_cpu=1, worker_memory="1 GiB")
    client = Client(cluster)
    try:
        print("Dashboard:", cluster.dashboard_link)
        client.wait_for_workers(5)

        x = da.random.RandomState(42).random((4_000, 4_000), chunks=(1_000, 1_000))
        print("dask.array mean of a 4000x4000 random matrix:", round(float(x.mean().compute()), 4))

        df = dd.from_pandas(
            pd.DataFrame({"key": [i % 7 for i in range(100_000)], "value": range(100_000)}),
            npartitions=10,
        )
        totals = df.groupby("key")["value"].sum().compute().sort_index()
        print("dask.dataframe group sums:", totals.to_dict())
        print(cluster)
    finally:
        client.close()
        cluster.close()
    print("Cluster closed; state:", cluster.state.value)


if __name__ == "__main__":
    main()
