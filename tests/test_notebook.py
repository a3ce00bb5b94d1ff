"""In a notebook: a real kernel creates a cluster, displays it, computes and closes it.

The cluster's display is distributed's own widget (scale and adapt controls, the cluster repr
with dashboard, workers, threads and memory) with the backend, state and requested workers added.
"""

from __future__ import annotations

import json
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    return json.dumps(output.get("data", {}))


def test_a_notebook_creates_displays_computes_and_closes_a_cluster(tmp_path):
    cells = [
        "import coiled\n"
        "cluster = coiled.Cluster(n_workers=1, worker_cpu=1, worker_memory='1 GiB', wait_for_workers=True)",
        "cluster",
        "from distributed import Client\nclient = Client(cluster)\nprint('answer', client.submit(lambda: 40 + 2).result())",
        "client.close()\ncluster.close()\nprint('state', cluster.state.value)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    client.execute(env=env)

    start, display, compute, close = ("".join(_text(o) for o in cell.outputs) for cell in notebook.cells)
    # The start-up progress shows in the notebook.
    assert "Cluster" in start and "on local" in start and "Workers" in start, start
    # distributed's widget, with this cluster's rows in its HTML.
    outputs = notebook.cells[1].outputs
    bundle = next(o["data"] for o in outputs if o.get("output_type") in ("display_data", "execute_result"))
    assert "application/vnd.jupyter.widget-view+json" in bundle, sorted(bundle)
    html = bundle["text/html"]
    for piece in ("Dashboard:", "Total threads:", "Total memory:", "Scheduler Info", "Backend:</strong> local",
                  "State:</strong> running", "Requested workers:</strong> 1"):
        assert piece in html, piece
    assert "answer 42" in compute
    assert "state stopped" in close
