"""Shared fixtures. Real data lives in ../shared/data beside the repository and is never
copied into it; tests that need it skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WSI_DETECT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared/data, or skip the calling test with a reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real test file {path} is absent")
    return path


@pytest.fixture(scope="session")
def phantom_small(tmp_path_factory) -> Path:
    """A small phantom slide (4096 x 3072 at 0.243 mpp) written once per session."""
    from napari_wsi_detect.phantom import write_phantom

    out = tmp_path_factory.mktemp("phantom") / "phantom.tif"
    write_phantom(out, seed=7, size=(4096, 3072), mpp=0.243)
    return out


def napari_viewer(request, show: bool):
    """napari's `make_napari_viewer`, or skip when there is no display (creating a
    QApplication without one aborts the process, so check before napari's fixture runs)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.skip("no display: run GUI tests under xvfb-run (scripts/run.sh test does)")
    return request.getfixturevalue("make_napari_viewer")(show=show)
