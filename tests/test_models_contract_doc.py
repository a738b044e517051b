"""The method contract as documented: docs/models.md's example runs, and the doc names every
declared part of the contract."""
import doctest
import os
import re
import subprocess
import sys

from tests.conftest import REPO_ROOT
from vos_models import VOSMethod
from vos_models.engine import conformance

DOC = REPO_ROOT / "docs" / "models.md"
SECTION = "### The method contract"


def contract_section() -> str:
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    return text[start:end if end >= 0 else None]


def test_the_contract_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", contract_section(), flags=re.S)
    assert blocks, f"no python example under {SECTION!r} in {DOC}"
    # A fresh process: the example registers a method, which must not leak into other tests.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", "\n\n".join(blocks)], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_doc_names_every_declared_part_of_the_contract():
    section = contract_section()
    declared = ["step", "step_clip", "state_type", "clip_wise", "clip_length", "trainable", "training_loss",
                "cuda_graph_modules", "compile_for_inference", "name", "build_config"]
    for name in declared:
        assert hasattr(VOSMethod, name) or name == "build_config", name
        assert f"`{name}" in section, f"docs/models.md's contract section does not mention {name}"
    assert VOSMethod().build_config == {}


def test_the_conformance_example_runs():
    result = doctest.testmod(conformance, raise_on_error=False)
    assert result.attempted >= 3 and result.failed == 0, result
