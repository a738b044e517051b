"""Every ```python block of the README runs as written (from the repository root, where the
README's relative paths point); a block that reads ../shared is skipped, saying so, without it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    code = BLOCKS[index]
    if "../shared" in code and not (REPO.parent / "shared").is_dir():
        pytest.skip("the block reads ../shared (the shared sample), which is not beside this clone")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, f"README block {index} failed:\n{code}\n{done.stderr[-3000:]}"
