"""Every ```python block of the README runs, so the README cannot rot.

The ```bash block (the two commands) is what .ci/run executes. A block that
imports an optional framework (torch, onnx, Dask ...) skips without it, and
fails under LSTMC_REQUIRE_ALL=1 (CI installs them all).
"""
import pathlib
import re

import pytest

from optional import require

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"),
                    flags=re.S | re.M) if README.exists() else []
OPTIONAL = ("torch", "onnx", "onnxruntime", "dask", "distributed")


def test_readme_has_python_examples():
    assert README.exists(), "README.md is missing"
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    code = BLOCKS[index]
    for name in OPTIONAL:
        if re.search(rf"^\s*(import|from) {name}\b", code, flags=re.M):
            require(name)
    exec(compile(code, f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})
