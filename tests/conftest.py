"""Shared pytest fixtures.

`../shared` (beside the clone) holds the parity fixtures and the DAVIS sample. CI has it;
a user's clone may not, so tests that need it skip and say why. `VOS_SHARED_DIR` overrides
the location.
"""
import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. The variable must be set
# before triton is imported (kernels are wrapped when their module is imported), so it is set
# here, before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The shared folder, or None when it is not present."""
    candidate = Path(os.environ.get("VOS_SHARED_DIR", REPO_ROOT.parent / "shared"))
    return candidate if candidate.is_dir() else None


def require_shared(*parts: str) -> Path:
    """Path to a file or folder inside ../shared, or skip the test saying what is missing."""
    root = shared_dir()
    if root is None:
        pytest.skip(f"needs ../shared beside the clone (looked in {REPO_ROOT.parent / 'shared'}; "
                    "set VOS_SHARED_DIR to point elsewhere)")
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path}, which is not present")
    return path


@pytest.fixture
def shared():
    """Fixture form of require_shared: call it with path parts."""
    return require_shared
