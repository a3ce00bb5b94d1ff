"""Registers ``coiled.yaml`` with dask.config so every ``coiled.*`` key has a documented default."""

from __future__ import annotations

import os

import dask.config
import yaml

_DEFAULTS_FILE = os.path.join(os.path.dirname(__file__), "coiled.yaml")

with open(_DEFAULTS_FILE) as f:
    DEFAULTS: dict = yaml.safe_load(f)

dask.config.update_defaults(DEFAULTS)


def get(key: str, default=None):
    """Read ``coiled.<key>`` from dask config (underscores and hyphens are interchangeable)."""
    return dask.config.get(f"coiled.{key}", default=default)
