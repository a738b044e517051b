"""Every ```python block of README.md runs as written, in order, in a fresh namespace each."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
SHARED = README.parent.parent / "shared"


def test_the_readme_has_python_blocks_and_the_quickstart():
    text = README.read_text()
    assert len(BLOCKS) >= 3
    assert text.index("## Quickstart") < text.index("## The two commands")
    assert "from vos_models import Tracker" in text


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    code = BLOCKS[index]
    if "../shared" in code and not SHARED.is_dir():
        pytest.skip(f"README block {index} reads ../shared, which is absent here ({SHARED})")
    monkeypatch.chdir(tmp_path)   # a block that writes files writes them here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # e.g. random weights: said on purpose
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
