"""Container images on the offline node: each name maps to a local Python environment.

No image can be pulled here. The Dask image's promise (a Python with dask, distributed and the
usual scientific stack, and no coiled-core) is kept by a virtual environment that sees this
client's installed packages but not the editable installs of this project: the packages
directory is added with a ``.pth`` line, so the ``__editable__`` finders there (which is how
coiled-core and the plugins are installed) are never run. The node agent therefore has to come
from the ConfigMap's bundle, as in a real pod. Made once per offline cluster, in well under a
second (no download).
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path


def dask_image_environment(directory: Path) -> str:
    """Make (once) the environment standing in for the Dask image; return its prefix."""
    python = directory / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        Path(site, "offline_dask_image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(directory)
