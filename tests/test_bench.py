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
# Children run in this folder: a source checkout in the working directory would
# come first on their sys.path, ahead of the lstmc under test.
HERE = os.path.dirname(os.path.abspath(__file__))
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
                          timeout=timeout, cwd=HERE)


def test_bench_quick_all_sections(tmp_path):
    out_json = tmp_path / "bench.json"
    proc = run_bench(*TINY, "--json", str(out_json))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for text in ("versions:", "lstmc", "env:", "OPENBLAS_CORETYPE=", "OPENBLAS_L2_SIZE=",
                 "== Cell:", "== Sequence:", "== Whole models:", "== Threads:", "== Pipeline:",
                 "n=1", "ort/lens", "torch/lens",
                 "median µs per call", "(N,D,H)", "(N,T,D,H)", "fwd/floor", "bwd/floor",
                 "numpy/fwd", "speed-up", "How to reproduce:"):
        assert text in out, "%r missing from the output:\n%s" % (text, out)
    assert "Traceback" not in proc.stderr
    assert out.rstrip().splitlines()[-1].startswith("How to reproduce:") or \
        "How to reproduce:" in out.rstrip().splitlines()[-2]

    report = json.loads(out_json.read_text())
    assert report["cell"] and report["seq"] and report["threads"] and report["pipeline"]
    models = report["models"][0]
    for key in ("lens", "full", "none", "ort lens", "torch packed"):
        assert models["median_us"][key] > 0, key
    assert report["cell"][0]["median_us"]["n=1 inf"] > 0
    assert report["seq"][0]["median_us"]["floor n=1 fwd"] > 0
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
            "from lstmc.bench import main\n"
            "sys.exit(main(%r))\n" % ([*TINY, "--section", "seq"],))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          encoding="utf-8", env=_env(), timeout=300, cwd=HERE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch (not installed)" in proc.stdout
    assert "onnxruntime (not installed" in proc.stdout
    assert "== Sequence:" in proc.stdout and "How to reproduce:" in proc.stdout


def test_bench_usage_error_is_one_line():
    proc = run_bench("--section", "nonsense")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_ratios_are_taken_within_rounds_and_neighbours_run_back_to_back():
    from lstmc.bench import contenders, timing

    def contender(key, samples, rounds):
        c = timing.Contender(key, None)
        c.samples, c.rounds = list(samples), list(rounds)
        return c

    # The load doubled in rounds 2 and 3, for both: the ratio within each round
    # is 2, while the ratio of the two medians is not.
    a = contender("fwd", [2, 2, 8, 8, 2], range(5))
    b = contender("floor fwd", [1, 1, 4, 4, 4], range(5))
    assert timing.paired_ratio(a, b) == 2.0
    assert timing.ratio(timing.median(a), timing.median(b)) == 0.5
    # Only the rounds both ran count; with none in common, the medians' ratio.
    c = contender("inf", [3, 30], [0, 4])
    assert timing.paired_ratio(c, b) == (3 / 1 + 30 / 4) / 2
    assert timing.paired_ratio(contender("x", [6], [9]), b) == 6 / 4
    assert timing.paired_ratio(contender("x", [], []), b) is None

    # Each thread pool's contenders run together (a pause only where the pool
    # changes): lstmc's (its own pool), the floor's (SciPy's OpenBLAS), ORT's, NumPy's.
    keys = ["numpy fwd", "bwd", "ort inf", "floor bwd", "f+b", "floor fwd", "inf", "fwd",
            "n=1 inf", "floor n=1 fwd"]
    cs = contenders.in_run_order([contender(k, [], []) for k in keys])
    assert [c.key for c in cs] == ["fwd", "inf", "f+b", "bwd", "n=1 inf", "floor fwd",
                                   "floor bwd", "floor n=1 fwd", "ort inf", "numpy fwd"]
    pools = [c.pool for c in cs]
    assert pools == ["lstmc"] * 5 + ["floor"] * 3 + ["ort", "numpy"]


def test_rounds_alternate_who_goes_first():
    from lstmc.bench import timing
    seen = []

    def timed(key):
        def batch(reps):
            seen.append(key)
            return 1e-6
        return timing.Contender(key, batch)

    for n in (2, 3, 5):
        cs = [timed(str(j)) for j in range(n)]
        del seen[:]
        assert timing.run_rounds(cs, 2 * n, 1e-4) == 2 * n
        runs = seen[-2 * n * n:]                      # after the calibration calls
        rounds = [runs[r * n:(r + 1) * n] for r in range(2 * n)]
        assert all(sorted(r) == sorted(c.key for c in cs) for r in rounds)
        assert {r[0] for r in rounds} == {c.key for c in cs}
        # Every two neighbours in the list take turns going first.
        for j in range(n - 1):
            a, b = str(j), str(j + 1)
            firsts = {r.index(a) < r.index(b) for r in rounds}
            assert firsts == {True, False}
        assert all(c.rounds == list(range(2 * n)) for c in cs)
