"""Shared fixtures. Real datasets are read from ../shared/data beside the checkout."""
import os
import pathlib

import asif_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any test imports TensorFlow)
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("ASIF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of ../shared/data; the real-data tests need it (CI has it beside the checkout)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real datasets not found at {SHARED_DATA}; set ASIF_SHARED_DATA")
    return SHARED_DATA
