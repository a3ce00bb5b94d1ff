"""The ``local`` backend: real Dask clusters as detached processes on this machine.

Found by coiled-core through its ``coiled_core.backends`` entry point, like any other backend.
"""
