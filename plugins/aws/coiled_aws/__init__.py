"""The ``aws`` backend: Dask clusters on EC2 through boto3.

Found by coiled-core through its ``coiled_core.backends`` entry point. boto3 is imported only
when this backend is used, never by ``import coiled`` or by listing backends.
"""
