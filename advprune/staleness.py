"""Whether the tables and the report still describe the run's records.

Snakemake deletes a job's outputs when it starts it again, and leaves them deleted when that job fails or is
stopped; the tables and the report built from them stay. So that old numbers never look current:

- when a Snakemake run is about to run anything the tables (or the report) are built from, a STALE.txt file is
  written beside them first (the workflow's `onstart` handler, workflow/rules/report.smk), and only the job that
  rebuilds them (aggregate, report) removes it: a run that fails, is stopped or is killed leaves it there;
- aggregate and report record the sha256 of every file they read (sources.json), so that `advprune publish` and
  `advprune restore` can check that the tables match the records whatever the files' modification times say.

Light on purpose: the Snakemake process imports it (no torch, no pandas).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

MARKER = "STALE.txt"
SOURCES = "sources.json"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def mark_stale(directory: str | os.PathLike, planned: Mapping[str, int], rebuilt_by: str) -> bool:
    """Write STALE.txt into `directory` (when it holds anything) naming the jobs about to run; True if written."""
    directory = Path(directory)
    if not planned or not directory.is_dir() or not any(p.name != MARKER for p in directory.iterdir()):
        return False
    jobs = ", ".join(f"{rule}: {n}" for rule, n in sorted(planned.items()))
    _write_atomic(directory / MARKER, f"STALE: the Snakemake run started {time.strftime('%Y-%m-%d %H:%M:%S')} runs jobs that the files in this "
                                      f"directory are built from ({jobs}).\nThey may show numbers that no record supports any more. This file is "
                                      f"removed when `{rebuilt_by}` has rebuilt them: run snakemake with the run's options and no target "
                                      "(after a failed or stopped run too).\n")
    return True


def record_sources(paths: Iterable[str | os.PathLike], manifest: str | os.PathLike) -> None:
    """Write the sha256 of every file read (`paths`) to `manifest` and remove the directory's STALE.txt: what is
    in it is current again."""
    manifest = Path(manifest)
    _write_atomic(manifest, json.dumps({Path(p).as_posix(): sha256(p) for p in sorted(set(map(str, paths)))}, indent=1) + "\n")
    (manifest.parent / MARKER).unlink(missing_ok=True)


def problems(directory: str | os.PathLike, root: str | os.PathLike = ".") -> list[str]:
    """Why the files in `directory` (a path below `root`, the run's working directory) do not describe what they
    were built from ([] when they do): a STALE.txt, no sources.json, or a source that is missing or has other
    contents than when they were built."""
    root = Path(root)
    marker, manifest = root / directory / MARKER, root / directory / SOURCES
    if marker.exists():
        return [f"{Path(directory, MARKER)}: {marker.read_text().splitlines()[0]}"]
    try:
        sources = json.loads(manifest.read_text())
    except (OSError, ValueError) as error:
        return [f"{Path(directory, SOURCES)}: cannot be read ({error}); nothing says what {directory} was built from"]
    out = []
    for path, digest in sources.items():
        if not (root / path).is_file():
            out.append(f"{directory} was built from {path}, which is missing")
        elif (now := sha256(root / path)) != digest:
            out.append(f"{directory} was built from {path}, which has changed since (sha256 {digest[:12]}…, now {now[:12]}…)")
    return out
