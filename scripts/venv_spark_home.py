"""Make the venv's ``spark-submit`` (and ``spark-class``, ``pyspark``, ...) work without an activated venv.

PySpark's pip-installed launchers source ``<venv>/bin/find-spark-home``, which runs
``find_spark_home.py`` with ``$PYSPARK_DRIVER_PYTHON``, else ``$PYSPARK_PYTHON``,
else a bare ``python3`` from ``PATH``. Outside an activated venv that ``python3``
has no PySpark, so ``.venv/bin/spark-submit`` dies with "Could not find valid
SPARK_HOME"; and the job's driver would run on that same interpreter, without the
project's libraries. ``make install`` therefore inserts a default at the top of
``find-spark-home``: when none of ``SPARK_HOME``, ``PYSPARK_DRIVER_PYTHON`` and
``PYSPARK_PYTHON`` is set, the driver's Python is the venv's own interpreter.
Executors keep Spark's default (the cluster's ``python3``, or ``PYSPARK_PYTHON``).

Idempotent (a marker line); reinstalling PySpark restores the original, and
``make install`` (whose stamp depends on this file) inserts it again.

Usage: ``python scripts/venv_spark_home.py VENV_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "# pe: default driver Python (scripts/venv_spark_home.py)"
BLOCK = f"""{MARKER}
# Outside an activated venv a bare `python3` lacks PySpark: use this venv's interpreter.
if [ -z "${{SPARK_HOME}}" ] && [ -z "${{PYSPARK_DRIVER_PYTHON}}" ] && [ -z "${{PYSPARK_PYTHON}}" ]; then
  export PYSPARK_DRIVER_PYTHON="$(cd "$(dirname "$0")"; pwd)/python"
fi
"""


def patch(venv: Path) -> bool:
    """Insert the default into ``venv/bin/find-spark-home``; returns False when it was already there."""
    script = venv / "bin" / "find-spark-home"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: is PySpark installed in {venv}?")
    text = script.read_text()
    if MARKER in text:
        return False
    shebang, newline, rest = text.partition("\n")
    if not shebang.startswith("#!"):
        raise ValueError(f"{script} does not start with a shebang line; not patching it")
    script.write_text(f"{shebang}{newline}{BLOCK}{rest}")
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    changed = patch(Path(argv[0]))
    print(f"{argv[0]}/bin/find-spark-home: {'patched' if changed else 'already patched'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
