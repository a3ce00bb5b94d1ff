"""A tiny local wheel, for tests that install software on a node without any package index."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def tiny_wheel(directory: Path) -> Path:
    """Write ``coiled_tiny_pkg-1.0-py3-none-any.whl`` into ``directory``; return its path.

    The distribution ``coiled-tiny-pkg`` 1.0: pure Python, no dependencies, importable as
    ``coiled_tiny_pkg`` (``VALUE == "tiny"``), with a ``coiled-tiny`` console script."""
    files = {
        "coiled_tiny_pkg/__init__.py": b"VALUE = 'tiny'\n\n\ndef main():\n    print('tiny main')\n",
        "coiled_tiny_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: coiled-tiny-pkg\nVersion: 1.0\n",
        "coiled_tiny_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "coiled_tiny_pkg-1.0.dist-info/entry_points.txt": b"[console_scripts]\ncoiled-tiny = coiled_tiny_pkg:main\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("coiled_tiny_pkg-1.0.dist-info/RECORD,,")
    path = Path(directory) / "coiled_tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("coiled_tiny_pkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path
