"""The packages form a stack: ``utils`` and ``base`` at the bottom import nothing above them,
``data_loader`` and ``model`` import nothing from ``trainer``, and the wiring that builds runs from
configs (``trainer/build.py``) sits at the top. Imports are read from the source (``ast``), inside
functions too, so a deferred import cannot hide a step up."""
import ast

import pytest

from tests.helpers import ROOT

PACKAGES = ("utils", "base", "data_loader", "model", "trainer")
FLOOR = {"utils": 0, "base": 0, "data_loader": 1, "model": 1, "trainer": 2}  # may import its floor and below


def imported_packages(path):
    """The project packages that ``path`` imports (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return found


def project_files(package):
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_nothing_above_its_floor(package):
    above = []
    for path in project_files(package):
        for other in imported_packages(path):
            if FLOOR[other] > FLOOR[package]:
                above.append(f"{path.relative_to(ROOT)} imports {other}")
    assert not above, above


def test_the_ground_floor_packages_do_not_import_each_other_upward():
    """``base`` (the contracts) may use ``utils``; ``utils`` never imports ``base``."""
    assert not [p for p in project_files("utils") if "base" in imported_packages(p)]


def test_the_wiring_is_at_the_top():
    assert {"data_loader", "model", "trainer"} <= imported_packages(ROOT / "trainer" / "build.py")
    assert not (ROOT / "utils" / "build.py").exists()


def test_the_checker_sees_deferred_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    from model.sync_batchnorm import x\n    import trainer.build\n")
    assert imported_packages(path) == {"model", "trainer"}
