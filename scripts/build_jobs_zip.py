"""Package the project's Python code for ``spark-submit --py-files`` (``make jobs-zip``).

The zip holds the ``jobs`` and ``personalization`` packages (the code the Spark
jobs import), ``.py`` files only, in sorted order with a fixed timestamp so the
same sources always give the same bytes. Third-party libraries (pyspark, Great
Expectations, MLflow, numpy) come from the cluster's image, installed from the
same ``constraints.txt`` (see docker/Dockerfile).

Usage: ``python scripts/build_jobs_zip.py [DEST]`` (default ``dist/personalization-jobs.zip``).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("jobs", "personalization")
DEFAULT_DEST = ROOT / "dist" / "personalization-jobs.zip"
#: 1980-01-01, the earliest time a zip entry can carry: builds are byte-reproducible.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def build(dest: str | Path = DEFAULT_DEST) -> Path:
    """Write the zip to ``dest`` (through a temporary name, then renamed) and return its path."""
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            for path in sorted((ROOT / package).rglob("*.py")):
                if "__pycache__" in path.parts:
                    continue
                info = zipfile.ZipInfo(path.relative_to(ROOT).as_posix(), date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
    tmp.replace(dest)
    return dest


if __name__ == "__main__":
    built = build(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DEST)
    print(built)
