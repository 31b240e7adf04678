"""What every entry script in scripts/ shares: the CLI skeleton and per-job process setup.

Results files another job wrote (evaluation records, tables, curves, prune infos) are read with `read_json` and
`read_csv`: a damaged one stops the job with one line naming the file and how to recompute it (the same
CheckpointError a damaged checkpoint gives, so the job's log has it), never a bare JSON or CSV traceback.

Run on its own, a script checks its arguments against the schema the workflow validates the config with, and
stops on a bad argument or config with one line naming it (no usage block, no traceback) before any work.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from advprune.runtime import configure_torch, pick_device, setup_logging


def start_job(log: str | None, threads: int | None, device: str = "auto"):
    """Logging to the job's log file, the job's thread budget, deterministic kernels; returns the device."""
    setup_logging(log)
    configure_torch(threads)
    return pick_device(device)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line instead of the usage block and the message."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def schema_arg(*path):
    """An argparse type: the value read as YAML, checked against the config schema at `path`
    (e.g. schema_arg("prune", "sparsities", 0) for one sparsity)."""

    def parse(text: str):
        import yaml

        from advprune.config import schema_error

        try:
            value = float(text) if _is_float(text) else yaml.safe_load(text)  # YAML 1.1 reads 5e-1 as a string
        except yaml.YAMLError:
            value = text
        problem = schema_error(value, *path)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return not text.strip().lstrip("+-").isdigit()  # integers stay integers (seeds)


def fraction(text: str) -> float:
    """A sparsity label in [0, 1) (0: the dense model)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1)")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


def parser(description: str) -> argparse.ArgumentParser:
    p = ArgumentParser(description=description)
    p.add_argument("--config", default="config/config.yaml", help="run configuration (validated)")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads for torch")
    p.add_argument("--log", default=None, help="also write the log to this file")
    return p


def add_training_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-model", required=True, help="checkpoint to write")
    p.add_argument("--out-curve", required=True, help="per-epoch training curve (CSV)")
    p.add_argument("--resume", required=True, help="resume state file, kept outside the outputs")


def load_config(path: str, method: str | None = None) -> dict:
    """The validated config; with `method`, which must be a key of its prune.methods. Exits with one line if not."""
    from advprune.config import ConfigError
    from advprune.config import load_config as load

    try:
        config = load(path)
        if method is not None and method not in config["prune"]["methods"]:
            raise ConfigError(f"--method {method!r} is not a key of prune.methods in {path} (known: {', '.join(config['prune']['methods'])})")
    except ConfigError as error:
        sys.exit(f"advprune: {error}")
    return config


def write_csv(rows: list[dict], path: str | os.PathLike, extra: dict | None = None, header: list[str] | None = None) -> None:
    """Rows as CSV (atomic); `extra` columns (e.g. identifying wildcards) are prepended to every row. Columns:
    `header` first, then any other key in order of first appearance (rows may differ, e.g. per-method curves)."""
    from advprune.checkpoint import atomic_write

    rows = [{**(extra or {}), **row} for row in rows]
    fields = list(dict.fromkeys([*(header or []), *(extra or {}), *(k for row in rows for k in row)]))

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_json(path: str | os.PathLike, required: tuple[str, ...] = (), check=None) -> dict:
    """A JSON object written by another job, holding at least the keys `required`; `check(obj)` returns what
    else is wrong with it (e.g. advprune.records.record_problem), or None."""
    import json

    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as error:
        _damaged(path, f"unreadable ({error})", error)
    except json.JSONDecodeError as error:
        _damaged(path, "empty file, not JSON" if not error.doc.strip() else f"truncated or corrupt JSON ({error})", error)
    if not isinstance(obj, dict):
        _damaged(path, f"not a JSON object (a {type(obj).__name__})")
    missing = [k for k in required if k not in obj]
    if missing:
        _damaged(path, f"lacks the key(s) {', '.join(missing)}")
    problem = check(obj) if check is not None else None
    if problem:
        _damaged(path, problem)
    return obj


def read_csv(path: str | os.PathLike, required: tuple[str, ...] = (), numbers: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """The rows of a CSV another job wrote with write_csv (every row as long as the header), as strings; its
    header has the columns `required`, and the columns `numbers` hold a number in every row. A file without a
    header has no rows (and none of the columns)."""
    # distances.csv keeps a record's distances in one cell (SVHN's 26,032 test points: ~0.5 MB), past csv's 128 KiB default
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 28))
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        _damaged(path, f"not a CSV table ({error})", error)
    missing = [c for c in required if c not in header]
    if missing:
        _damaged(path, f"lacks the column(s) {', '.join(missing)}" + ("" if header else " (empty file)"))
    for line, row in enumerate(rows, 2):  # DictReader marks a short row with None values, a long one with a None key
        if None in row or None in row.values():
            fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, []))
            _damaged(path, f"truncated or corrupt CSV (line {line} has {fields} fields, the header {len(header)})")
        for column in numbers:
            if not _is_number(row[column]):
                _damaged(path, f"corrupt CSV (line {line}: {column} {row[column]!r} is not a number)")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _damaged(path, reason: str, cause: BaseException | None = None):
    from advprune.checkpoint import RECOMPUTE, CheckpointError  # torch only on this path: report jobs need none

    raise CheckpointError(path, reason, RECOMPUTE) from cause


def refuse(message: str):
    """Stop the job before any work with one line (`advprune: message`) on the console and in its log."""
    import logging

    logging.getLogger("advprune").critical("job refused: %s", message)
    sys.exit(f"advprune: {message}")


def remove_resume_state(path: str | os.PathLike) -> None:
    """Once the declared outputs are written, the resume state has served its purpose."""
    Path(path).unlink(missing_ok=True)
