"""Registers ``coiled.yaml`` with dask.config so every ``coiled.*`` key has a documented default."""

from __future__ import annotations

import pkgutil

import dask.config
import yaml

# pkgutil reads package data from a zip too: a node agent may import coiled_core from one.
DEFAULTS: dict = yaml.safe_load(pkgutil.get_data("coiled_core", "coiled.yaml") or b"")

dask.config.update_defaults(DEFAULTS)


def get(key: str, default=None):
    """Read ``coiled.<key>`` from dask config (underscores and hyphens are interchangeable)."""
    return dask.config.get(f"coiled.{key}", default=default)
