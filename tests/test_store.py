"""The store's writes: atomic under concurrency, and private files private from their first byte."""

from __future__ import annotations

import os
import stat
import sys
import threading

import pytest

from coiled_core.store import Store

#: Set by a test while it wants the audit hook below to look at the store's file operations.
_watched: dict[str, list] = {}


def _audit(event: str, args: tuple) -> None:
    """Record the mode a file under a watched root has just before it is chmodded or renamed:
    the moment between creating a file and fixing its mode is exactly what must not exist."""
    if not _watched or event not in ("os.chmod", "os.rename"):
        return
    path = args[0]
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(path)
    for root, seen in _watched.items():
        if path.startswith(root) and os.path.isfile(path):
            seen.append((event, path, stat.S_IMODE(os.stat(path).st_mode)))


sys.addaudithook(_audit)


def test_private_files_are_never_readable_by_others(tmp_path):
    old_umask = os.umask(0o022)
    store = Store(str(tmp_path / "store"))
    seen: list = []
    _watched[str(tmp_path)] = seen
    try:
        store.write("clusters/c/tls/ca-key.pem", b"secret" * 1000, private=True)
    finally:
        _watched.clear()
        os.umask(old_umask)
    assert seen, "the write went through no rename: the test no longer sees it"
    for event, path, mode in seen:
        assert mode & 0o077 == 0, f"{path} had mode {oct(mode)} at {event}"
    path = store.local_path("clusters/c/tls/ca-key.pem")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert open(path, "rb").read() == b"secret" * 1000


def test_private_write_into_an_existing_open_directory_closes_it(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.write("clusters/c/tls/ca.pem", b"public")
    directory = os.path.dirname(store.local_path("clusters/c/tls/ca.pem"))
    os.chmod(directory, 0o755)
    store.write("clusters/c/tls/client-key.pem", b"key", private=True)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_concurrent_writers_of_one_key_all_succeed(tmp_path):
    store = Store(str(tmp_path / "store"))
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(i: int) -> None:
        start.wait()
        try:
            for _ in range(20):
                store.write("configurations/a/b.json", f"writer {i}".encode() * 1000)
        except BaseException as e:  # noqa: BLE001 - the test reports every failure
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    data = store.read("configurations/a/b.json")
    assert data in {f"writer {i}".encode() * 1000 for i in range(8)}
    # No temporary file is left beside the document.
    assert list(store.list("configurations/a")) == ["b.json"]


def test_a_failed_write_leaves_the_old_value_and_no_temporary_file(tmp_path):
    store = Store(str(tmp_path / "store"))
    store.write("k/v", b"old")

    with pytest.raises(TypeError):
        store.write("k/v", object())  # type: ignore[arg-type]
    assert store.read("k/v") == b"old"
    assert list(store.list("k")) == ["v"]
