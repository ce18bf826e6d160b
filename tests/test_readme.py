"""Every ```python block of the README runs, so the README cannot rot.

The ```bash block (the two commands) is what .ci/run executes.
"""
import importlib.util
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"),
                    flags=re.S | re.M) if README.exists() else []
OPTIONAL = ("torch", "dask", "onnxruntime")


def test_readme_has_python_examples():
    assert README.exists(), "README.md is missing"
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    code = BLOCKS[index]
    for name in OPTIONAL:
        if re.search(rf"^\s*(import|from) {name}\b", code, flags=re.M) \
                and importlib.util.find_spec(name) is None:
            pytest.skip(f"README block {index} needs {name}, which is not installed")
    exec(compile(code, f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})
