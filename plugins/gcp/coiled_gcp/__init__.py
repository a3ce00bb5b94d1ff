"""The ``gcp`` backend of coiled-core: Dask clusters on Compute Engine.

Kept empty: nodes import :mod:`coiled_gcp.node` through this package, and ``import coiled_gcp``
must not import the Compute Engine SDK (only a GCP cluster's first API call does).
"""
