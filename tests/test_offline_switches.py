"""The offline stand-ins' switches are refused where no stand-in runs: with loopback addresses
on, coiled would connect to this machine instead of the cloud."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from coiled_core.node.addresses import STANDIN_VARIABLE, OfflineSwitchError, loopback_mode, map_address, standin_running
from coiled_core.testing.standin import StandInProof, standin_proof


@pytest.fixture
def no_standin(monkeypatch):
    monkeypatch.delenv(STANDIN_VARIABLE, raising=False)
    monkeypatch.delenv("DASK_COILED__LOOPBACK_ADDRESSES", raising=False)


def test_the_loopback_switch_is_refused_without_a_running_standin(no_standin, monkeypatch):
    monkeypatch.setenv("DASK_COILED__LOOPBACK_ADDRESSES", "true")
    with pytest.raises(OfflineSwitchError, match="DASK_COILED__LOOPBACK_ADDRESSES is a switch of the offline stand-ins"):
        loopback_mode()
    with pytest.raises(OfflineSwitchError):
        map_address("tls://10.0.0.5:8786")


def test_the_dask_config_switch_is_refused_too(no_standin):
    import dask.config

    with dask.config.set({"coiled.loopback-addresses": True}):
        with pytest.raises(OfflineSwitchError, match="coiled.loopback-addresses"):
            loopback_mode()


def test_off_needs_no_standin(no_standin):
    assert loopback_mode() is False
    assert map_address("tls://10.0.0.5:8786") == "tls://10.0.0.5:8786"


def test_a_running_standin_lets_the_switch_on(no_standin, monkeypatch):
    monkeypatch.setenv("DASK_COILED__LOOPBACK_ADDRESSES", "true")
    with standin_proof() as proof:
        monkeypatch.setenv(STANDIN_VARIABLE, str(proof.path))
        assert loopback_mode() is True
        assert map_address("tls://10.0.0.5:8786") == "tls://127.0.0.5:8786"
    # Stopped: the proof is gone.
    with pytest.raises(OfflineSwitchError):
        loopback_mode()


def test_a_forged_or_stale_proof_is_refused(tmp_path):
    proof = StandInProof(tmp_path).create()
    assert standin_running(str(proof.path))
    os.chmod(proof.path, 0o644)  # others may read it (or wrote it)
    assert not standin_running(str(proof.path))
    os.chmod(proof.path, 0o600)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    proof.path.write_text(json.dumps({"pid": int(dead.stdout), "token": proof.token}))  # its stand-in ended
    assert not standin_running(str(proof.path))
    other = tmp_path / "someone-else.json"
    other.write_text(json.dumps({"pid": os.getpid(), "token": proof.token}))  # not named by its token
    other.chmod(0o600)
    assert not standin_running(str(other))
    assert not standin_running(str(tmp_path / "missing.json"))
