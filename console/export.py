"""Write a view's rows to a JSON or CSV file the operator can find (named in a notification)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FORMATS = ("json", "csv")


def export_path(directory: Path, name: str, fmt: str, at: float) -> Path:
    """`<dir>/<name>-YYYYmmdd-HHMMSS.<fmt>`, with `-2`, `-3`... when that file exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(at))
    path = directory / f"{name}-{stamp}.{fmt}"
    n = 2
    while path.exists():
        path = directory / f"{name}-{stamp}-{n}.{fmt}"
        n += 1
    return path


def write_export(
    directory: Path, name: str, rows: Sequence[dict[str, Any]], fmt: str, at: float
) -> Path:
    """Blocking (run it in a thread): creates the directory, never overwrites a file."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, not {fmt!r}")
    directory.mkdir(parents=True, exist_ok=True)
    path = export_path(directory, name, fmt, at)
    with path.open("x", encoding="utf-8", newline="") as out:
        if fmt == "json":
            json.dump(list(rows), out, indent=1, default=str)
            out.write("\n")
        else:
            fields: dict[str, None] = {}
            for row in rows:
                fields.update(dict.fromkeys(row))
            writer = csv.DictWriter(out, fieldnames=list(fields))
            writer.writeheader()
            writer.writerows(rows)
    return path
