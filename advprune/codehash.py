"""Which library code a stage runs, and a hash of it.

Snakemake re-runs a `script:` rule when the script file changes, not when the library code it imports does.
Each rule therefore carries `code_hash(script)` as a param: the sha256 over the script and every advprune
module it imports, transitively (found statically from the import statements). Changing any of those files
changes the param, and Snakemake re-runs that stage and only the stages that depend on its outputs.
Deliberately light (stdlib only): the Snakefile imports it while building the DAG. A paper-scale DAG asks
for thousands of hashes of the same few dozen files, so each file's imports and digest are computed once per
version of the file (keyed by its modification time and size: an edited file is read again).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "advprune"
_ROOT = Path(__file__).resolve().parent.parent


def _module_file(module: str) -> Path | None:
    path = _ROOT.joinpath(*module.split("."))
    if path.is_dir() and (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def _package_of(path: Path) -> list[str]:
    """Dotted package parts of a file under the repository (a script outside advprune has none)."""
    try:
        parts = list(path.relative_to(_ROOT).with_suffix("").parts)
    except ValueError:
        return []
    return parts[:-1]


def _version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _imports(path: Path) -> frozenset[str]:
    return _imports_of_version(path, _version(path))


@functools.lru_cache(maxsize=None)
def _imports_of_version(path: Path, version: tuple[int, int]) -> frozenset[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from . import x` / `from .mod import y`: resolve against this file's package
                base = _package_of(path)[: len(_package_of(path)) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return frozenset(m for m in found if m == PACKAGE or m.startswith(PACKAGE + "."))


def source_files(script: str | Path, extra_modules: tuple[str, ...] = ()) -> list[Path]:
    """The script plus every advprune module it reaches through imports (parents' __init__ included).
    Modules loaded dynamically (a pruning method chosen by name) are named in `extra_modules`."""
    key = (Path(script).resolve(), tuple(extra_modules))
    cached = _closures.get(key)
    if cached is not None and all(_version(path) == version for path, version in cached):
        return [path for path, _ in cached]
    files = _find_source_files(*key)
    _closures[key] = [(path, _version(path)) for path in files]
    return files


_closures: dict[tuple[Path, tuple[str, ...]], list[tuple[Path, tuple[int, int]]]] = {}


def _find_source_files(script: Path, extra_modules: tuple[str, ...]) -> list[Path]:
    seen: set[Path] = set()
    todo = [script, *(f for f in map(_module_file, extra_modules) if f)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                file = _module_file(".".join(parts[:i]))
                if file and file not in seen:
                    todo.append(file)
    return sorted(seen)


@functools.lru_cache(maxsize=None)
def _file_digest(path: Path, version: tuple[int, int]) -> bytes:
    return hashlib.sha256(path.name.encode() + b"\0" + path.read_bytes()).digest()


def code_hash(script: str | Path, extra_modules: tuple[str, ...] = ()) -> str:
    digest = hashlib.sha256()
    for path in source_files(script, extra_modules):
        digest.update(_file_digest(path, _version(path)))
    return digest.hexdigest()[:16]
