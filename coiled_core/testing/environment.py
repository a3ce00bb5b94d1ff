"""Running tests against an offline stand-in: its variables in this process's environment.

Each offline cloud (EC2, Compute Engine, Kubernetes) answers on 127.0.0.1 and is found through
environment variables (an endpoint, credentials, a kubeconfig) that the client and every
process the tests start must see; its nodes listen on loopback addresses. :func:`offline_environment`
sets both for the duration of a ``with`` block and puts everything back afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any


@contextlib.contextmanager
def offline_environment(environ: Mapping[str, str], unset: tuple[str, ...] = (),
                        config: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Within the block: ``environ`` set and ``unset`` removed in ``os.environ`` (so child
    processes inherit them), and dask config ``coiled.loopback-addresses`` on plus ``config``.

    Example::

        with offline_environment(simulator.environ(), unset=("AWS_PROFILE",)):
            cluster = coiled.Cluster(backend="aws", ...)
    """
    import dask.config

    from coiled_core.node.addresses import STANDIN_VARIABLE, standin_running
    from coiled_core.testing.standin import StandInProof

    # The stand-in's switches are honoured only with a proof that a stand-in runs: the
    # stand-in's own, or one for this block.
    proof = None
    if not standin_running(environ.get(STANDIN_VARIABLE) or os.environ.get(STANDIN_VARIABLE, "")):
        proof = StandInProof().create()
        environ = {**environ, **proof.environ()}
    saved = {key: os.environ.get(key) for key in (*environ, *unset)}
    for key in unset:
        os.environ.pop(key, None)
    os.environ.update(environ)
    try:
        with dask.config.set({"coiled.loopback-addresses": True, **(config or {})}):
            yield
    finally:
        if proof is not None:
            proof.remove()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
