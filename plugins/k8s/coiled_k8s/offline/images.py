"""Container images on the offline node: each name maps to a local Python environment.

No image can be pulled here. The Dask image's promise (a Python with dask, distributed and the
usual scientific stack, uv, and no coiled-core) is kept by a virtual environment that sees this
client's installed packages but not the editable installs of this project: the packages
directory is added with a ``.pth`` line, so the ``__editable__`` finders there (which is how
coiled-core and the plugins are installed) are never run. The node agent therefore has to come
from the ConfigMap's bundle, as in a real pod. Made once per offline cluster, in well under a
second (no download).

A real container writes into its own layer, never into the image. :func:`container_layer` gives
each container the same: a virtual environment of its own that sees the image's packages, so
what a pod installs at start (``EXTRA_PIP_PACKAGES``) lands in that pod only and goes with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

#: The file that makes a directory a virtual environment (and an image a layered one).
_VENV_MARK = "pyvenv.cfg"


def _site_packages(prefix: Path) -> Path:
    return prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def dask_image_environment(directory: Path) -> str:
    """Make (once) the environment standing in for the Dask image; return its prefix."""
    python = directory / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        Path(site, "offline_dask_image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        # The image's uv (the one installed next to this Python, else the one on PATH).
        uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
        if uv:
            (directory / "bin" / "uv").symlink_to(uv)
    return str(directory)


def container_layer(image: str, directory: Path) -> str:
    """A container's writable environment on top of the image environment ``image``; return its
    prefix. An image that is not a virtual environment is used as it is (read-only by convention).

    The layer is a virtual environment of the same base Python: its ``bin`` links the image's
    programs, its site-packages holds the image's ``.pth`` files and one more naming the image's
    site-packages, so the image's packages import and what is installed lands in the layer (and
    comes first on ``sys.path``)."""
    source = Path(image)
    if not (source / _VENV_MARK).is_file():
        return image
    (directory / "bin").mkdir(parents=True)
    shutil.copyfile(source / _VENV_MARK, directory / _VENV_MARK)
    for program in (source / "bin").iterdir():
        if program.is_symlink() or program.name.startswith("python"):
            # Links as they are (a Python must stay a link for the venv to be found from it).
            target = os.readlink(program) if program.is_symlink() else program
            (directory / "bin" / program.name).symlink_to(target)
    image_site, layer_site = _site_packages(source), _site_packages(directory)
    layer_site.mkdir(parents=True)
    for pth in image_site.glob("*.pth"):
        shutil.copyfile(pth, layer_site / pth.name)
    (layer_site / "offline_image_layer.pth").write_text(f"{image_site}\n")
    return str(directory)
