"""Smoke test of ``python -m lstmc bench``: it runs, end to end, and prints its tables.

Each run is a subprocess on the tiniest budget (``--quick``: one small case per
section, a couple of rounds of ~1 ms batches). Nothing here asserts a timing: the
benchmark is measured by people, not by tests.
"""

import json
import os
import subprocess
import sys

import lstmc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lstmc.__file__)))
TINY = ["--quick", "--rounds", "2", "--target-ms", "1", "--dtype", "float32"]


def _env():
    env = dict(os.environ)
    # The subprocess must import the very lstmc under test (installed or in place).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def run_bench(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lstmc", "bench", *args],
                          capture_output=True, text=True, encoding="utf-8", env=_env(),
                          timeout=timeout)


def test_bench_quick_all_sections(tmp_path):
    out_json = tmp_path / "bench.json"
    proc = run_bench(*TINY, "--json", str(out_json))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for text in ("versions:", "lstmc", "env:", "OPENBLAS_CORETYPE=", "OPENBLAS_L2_SIZE=",
                 "== Cell:", "== Sequence:", "== Threads:",
                 "median µs per call", "(N,D,H)", "(N,T,D,H)", "fwd/floor", "bwd/floor",
                 "numpy/fwd", "speed-up", "How to reproduce:"):
        assert text in out, "%r missing from the output:\n%s" % (text, out)
    assert "Traceback" not in proc.stderr
    assert out.rstrip().splitlines()[-1].startswith("How to reproduce:") or \
        "How to reproduce:" in out.rstrip().splitlines()[-2]

    report = json.loads(out_json.read_text())
    assert report["cell"] and report["seq"] and report["threads"]
    cell = report["cell"][0]
    assert cell["shape"] == [1, 32, 32] and cell["dtype"] == "float32"
    for key in ("fwd", "inf", "bwd", "f+b", "numpy fwd"):
        assert cell["median_us"][key] > 0
        assert len(cell["samples_us"][key]) == 2


def test_bench_skips_frameworks_when_asked():
    proc = run_bench(*TINY, "--section", "cell", "--no-torch", "--no-onnxruntime")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped:" in proc.stdout and "torch (--no-torch)" in proc.stdout
    assert "== Cell:" in proc.stdout and "== Sequence:" not in proc.stdout


def test_bench_without_torch_and_onnxruntime_installed():
    # A None entry in sys.modules makes the import fail as if the package were absent.
    code = ("import sys\n"
            "for name in ('torch', 'onnx', 'onnxruntime'):\n"
            "    sys.modules[name] = None\n"
            "from lstmc._bench import main\n"
            "sys.exit(main(%r))\n" % ([*TINY, "--section", "seq"],))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          encoding="utf-8", env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch (not installed)" in proc.stdout
    assert "onnxruntime (not installed" in proc.stdout
    assert "== Sequence:" in proc.stdout and "How to reproduce:" in proc.stdout


def test_bench_usage_error_is_one_line():
    proc = run_bench("--section", "nonsense")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
