"""Imports point one way: `cocosnet/` is the library; `stages/`, `bench/`, `pipelines/` and `tests/` import
from it and from nothing else of the project (each may import from its own folder)."""

import ast

from tests.helpers import ROOT

FOLDERS = ("cocosnet", "stages", "bench", "pipelines", "tests")


def imported_top_levels(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_every_folder_imports_only_the_library_and_itself():
    wrong = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name in imported_top_levels(path):
                if name in FOLDERS and name not in ("cocosnet", folder):
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, wrong


def test_the_check_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import os\nfrom stages.common import run_stage\n\ndef f():\n    import bench.harness\n")
    assert list(imported_top_levels(bad)) == ["os", "stages", "bench"]
