"""slide/levels.py: the level vocabulary shared by `base`, `pyramid` and the backends,
and the absence of the base ⇄ pyramid import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import napari_wsi_detect.slide as slide_pkg
from napari_wsi_detect.slide.levels import (
    SYNTHETIC_TARGET,
    Level,
    round_half_up,
    synthetic_levels,
)

SLIDE_DIR = Path(slide_pkg.__file__).parent


def _runtime_imports(path: Path) -> set[str]:
    """Modules imported at module level, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue  # imports inside functions and methods run only when called
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom):
                out.add("." * sub.level + (sub.module or ""))
            elif isinstance(sub, ast.Import):
                out.update(a.name for a in sub.names)
    return out


@pytest.mark.parametrize("module", ["pyramid.py", "levels.py"])
def test_no_runtime_import_of_base(module):
    assert ".base" not in _runtime_imports(SLIDE_DIR / module)


def test_base_imports_pyramid_only_lazily():
    assert ".pyramid" not in _runtime_imports(SLIDE_DIR / "base.py")
    assert ".levels" in _runtime_imports(SLIDE_DIR / "base.py")


def test_round_half_up_is_not_bankers_rounding():
    assert [round_half_up(v) for v in (0.5, 1.5, 2.5, -0.5, 2.49)] == [1, 2, 3, 0, 2]


def test_synthetic_levels_halve_down_below_the_target():
    native = [Level((5000, 3001), 1.0), Level((2500, 1501), 2.0)]
    extra = synthetic_levels(native)
    assert [lv.shape for lv in extra] == [(1250, 751), (625, 376)]
    assert [lv.downsample for lv in extra] == [4.0, 8.0]
    assert all(lv.synthetic for lv in extra) and max(extra[-1].shape) < SYNTHETIC_TARGET
    assert synthetic_levels([Level((1000, 800), 1.0)]) == []


def test_level_is_the_one_the_package_exports():
    from napari_wsi_detect.slide import Level as exported
    from napari_wsi_detect.slide.base import Level as used_by_base

    assert exported is Level is used_by_base
    assert Level((3, 4), 1.0, tile=(256, 256)) == Level((3, 4), 1.0)  # tile not compared
