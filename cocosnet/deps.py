"""Which of this project's source files a module runs: its import closure, read from the source.

Used twice, so the two cannot drift: a test checks that each DVC stage's `deps`
cover the closure of the module its `cmd` runs, and a training checkpoint
records the hashes of its loop's closure (a code change means a new run, as it
does for DVC). Imports inside functions count: they run too. A module's compiled part,
a `.cpp` file of the same name beside it (models/kernels.cpp), is in the closure with it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("cocosnet", "stages", "pipelines")
REPO = Path(__file__).resolve().parents[1]


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file that defines module `name` under `root` (a package's `__init__.py`), if any."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{node.module}" if node.module else parent
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def import_closure(module: str, root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    """Files (relative to `root`, sorted) of `module` and every project module it imports, with the
    `__init__.py` of each package on the way (importing `a.b.c` runs `a` and `a.b` first)."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] not in packages:
            continue
        path = module_file(name, root)
        if path is None:
            continue  # an attribute imported from a module, not a module
        seen[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imported_names(path, name))
    files = set(seen.values())
    files |= {p.with_suffix(".cpp") for p in files if p.with_suffix(".cpp").is_file()}
    return sorted(p.relative_to(root) for p in files)
