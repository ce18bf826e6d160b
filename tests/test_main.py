"""``python -m lstmc``: the training demo, ``check`` and the command-line errors.

Every test runs the command in a subprocess, on the very lstmc this process
imports (its parent directory goes first on PYTHONPATH), from a scratch working
directory, with tiny budgets so the whole file takes seconds.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

import lstmc
from lstmc.charlm import config as _train
from optional import require

PKG_PARENT = str(pathlib.Path(lstmc.__file__).resolve().parent.parent)
TINY = ["--steps", "30", "--hidden", "32", "--length", "120"]


def run(args, cwd, timeout=300):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PKG_PARENT] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run([sys.executable, "-m", "lstmc", *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout)


def field(stdout, pattern):
    m = re.search(pattern, stdout, re.MULTILINE)
    assert m, "no match for %r in:\n%s" % (pattern, stdout)
    return m.groups()


def sample_of(stdout):
    lines = stdout.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("sample ("))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("  | "):
            break
        body.append(line[4:])
    return body


def without_timings(text):
    """Drop what depends on the clock: the 'done' line and elapsed seconds."""
    text = re.sub(r"^done .*$", "done", text, flags=re.MULTILINE)
    return re.sub(r"\s+[0-9.]+ s$", "", text, flags=re.MULTILINE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("main")


@pytest.fixture(scope="module")
def tiny_run(workdir):
    return run(TINY, workdir)


# --------------------------------------------------------------------------- training

def test_tiny_run_learns(tiny_run):
    r = tiny_run
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = r.stdout
    assert "lstmc.TimeLSTM 32->32" in out
    assert "budget    30 steps (no time limit)" in out
    first, last = map(float, field(out, r"training loss\s+([0-9.]+) -> ([0-9.]+)"))
    assert last < first - 0.1
    (val,) = map(float, field(out, r"validation\s+perplexity ([0-9.]+)"))
    (uni,) = map(float, field(out, r"unigram\s+perplexity ([0-9.]+)"))
    assert 1.0 < val < uni
    assert "better than the unigram baseline:" in out
    (steps,) = field(out, r"^done\s+([0-9,]+) steps")
    assert steps == "30"


def test_tiny_run_sample_is_printable_text(tiny_run):
    out = tiny_run.stdout
    assert "primed with 'The '" in out
    body = sample_of(out)
    text = "\n".join(body)
    assert text.startswith("The ")
    assert all(line.isprintable() for line in body)
    # After 30 steps it is mostly spaces (the commonest character), but not only.
    assert sum(ch.isalpha() for ch in text[4:]) >= 5


def test_progress_lines_when_not_a_tty(tiny_run):
    # stderr is a pipe here: no carriage returns, one line per 10% of the budget.
    err = tiny_run.stderr
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.strip().startswith("step")]
    assert len(lines) == 10
    assert lines[-1].lstrip().startswith("step 30/30")
    assert all(re.search(r"loss [0-9.]+ +ppl +[0-9.]+", line) for line in lines)


def test_same_seed_same_run(tiny_run, workdir):
    again = run(TINY, workdir)
    assert again.returncode == 0, again.stderr
    assert without_timings(again.stdout) == without_timings(tiny_run.stdout)
    assert without_timings(again.stderr) == without_timings(tiny_run.stderr)


def test_other_seed_other_run(tiny_run, workdir):
    other = run(TINY + ["--seed", "7"], workdir)
    assert other.returncode == 0, other.stderr
    assert sample_of(other.stdout) != sample_of(tiny_run.stdout)
    assert "seed 7" in other.stdout


def test_steps_win_over_seconds(workdir):
    r = run(["--steps", "4", "--seconds", "0.001", "--hidden", "16", "--length", "10"],
            workdir)
    assert r.returncode == 0, r.stderr
    assert "--seconds ignored because --steps is given" in r.stdout
    assert field(r.stdout, r"^done\s+(\S+) steps")[0] == "4"
    assert "step budget reached" in r.stdout


def test_time_budget(workdir):
    r = run(["--seconds", "0.3", "--hidden", "16", "--length", "10"], workdir)
    assert r.returncode == 0, r.stderr
    assert "budget    0.3 s (no step limit)" in r.stdout
    assert "time budget reached" in r.stdout


def test_default_budget_is_announced(workdir):
    # The README's `python -m lstmc`, no arguments: its header announces the
    # default budget (steps, and seconds for a slow machine) before training
    # starts. Read that line, then stop the run: the budget itself takes ~a minute.
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONPATH=os.pathsep.join(
        [PKG_PARENT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.Popen([sys.executable, "-m", "lstmc"], cwd=str(workdir), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, encoding="utf-8")
    header = []
    try:
        for line in proc.stdout:              # flushed line by line; ends by the budget
            header.append(line.rstrip("\n"))
            if line.startswith("  budget") or not line.strip():
                break
    finally:
        proc.kill()
        proc.communicate()
    budget = [line for line in header if line.startswith("  budget")]
    assert budget, "no budget line in the header:\n" + "\n".join(header)
    steps, seconds = field(budget[0], r"^  budget\s+up to ([0-9,]+) steps or ([0-9.]+) s, "
                                      r"whichever comes first$")
    assert int(steps.replace(",", "")) == _train.DEFAULT_STEPS > 0
    assert float(seconds) == _train.DEFAULT_SECONDS
    assert 0 < float(seconds) <= 60, "the README promises about a minute"


def test_help_names_the_commands_and_options(workdir):
    r = run(["--help"], workdir)
    assert r.returncode == 0, r.stderr
    assert "check" in r.stdout and "bench" in r.stdout
    assert "--corpus" in r.stdout and "--seconds" in r.stdout and "--steps" in r.stdout


def test_float64_and_own_corpus(workdir):
    corpus = workdir / "tale.txt"
    line = "It was the best of times, it was the worst of times, it was the age of wisdom.\n"
    corpus.write_text(line * 40, encoding="utf-8")
    r = run(["--corpus", str(corpus), "--dtype", "float64", "--steps", "20", "--hidden", "16",
             "--length", "40"], workdir)
    assert r.returncode == 0, r.stderr
    assert "tale.txt: 3,160 characters" in r.stdout
    assert "float64" in r.stdout
    first, last = map(float, field(r.stdout, r"training loss\s+([0-9.]+) -> ([0-9.]+)"))
    assert last < first


def test_save_writes_loadable_weights(workdir):
    from lstmc import load

    path = workdir / "weights.npz"
    r = run(["--steps", "3", "--hidden", "8", "--length", "5", "--save", str(path)], workdir)
    assert r.returncode == 0, r.stderr
    assert "saved" in r.stdout and str(path) in r.stdout
    layer = load(path)
    Wx, Wh, b = layer.params
    assert Wh.shape == (8, 32) and b.shape == (32,) and Wx.shape[1] == 32
    assert str(Wx.dtype) == "float32"


def test_plot(workdir):
    path = workdir / "loss.png"
    r = run(["--steps", "3", "--hidden", "8", "--length", "5", "--plot", str(path)], workdir)
    assert r.returncode == 0, r.stderr
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        notes = [line for line in r.stderr.splitlines() if "matplotlib" in line]
        assert len(notes) == 1 and "not installed" in notes[0]
        assert not path.exists()
    else:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- errors

def _bad_cases(tmp):
    empty = tmp / "empty.txt"
    empty.write_text("")
    short = tmp / "short.txt"
    short.write_text("too short to train on\n" * 10)
    binary = tmp / "binary.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 500)
    return {
        "hidden zero": ["--hidden", "0"],
        "hidden not a number": ["--hidden", "many"],
        "negative steps": ["--steps", "-3"],
        "zero seconds": ["--seconds", "0"],
        "unknown dtype": ["--dtype", "float16"],
        "unknown option": ["--bogus"],
        "stray argument": ["train-me"],
        "missing corpus": ["--corpus", str(tmp / "nope.txt")],
        "corpus is a directory": ["--corpus", str(tmp)],
        "empty corpus": ["--corpus", str(empty)],
        "corpus too short": ["--corpus", str(short)],
        "corpus not utf-8": ["--corpus", str(binary)],
        "save into missing dir": ["--save", str(tmp / "no" / "dir" / "w.npz")],
        "check with an argument": ["check", "--bogus"],
    }


BAD = [
    "hidden zero", "hidden not a number", "negative steps", "zero seconds", "unknown dtype",
    "unknown option", "stray argument", "missing corpus", "corpus is a directory",
    "empty corpus", "corpus too short", "corpus not utf-8", "save into missing dir",
    "check with an argument"]


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_one_line_exit_2(case, tmp_path):
    args = _bad_cases(tmp_path)[case]
    r = run(args, tmp_path, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "error" in lines[0]
    assert r.stdout == ""


def test_short_corpus_message_says_what_is_needed(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("x" * 200)
    r = run(["--corpus", str(short)], tmp_path)
    assert r.returncode == 2
    assert "too short" in r.stderr and "200 characters" in r.stderr and "1,139" in r.stderr
    # Smaller batches make the same file usable.
    r = run(["--corpus", str(short), "--batch", "4", "--bptt", "8", "--steps", "2",
             "--hidden", "4", "--length", "5"], tmp_path)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- check

@pytest.fixture(scope="module")
def check_run(workdir):
    return run(["check"], workdir)


def test_check_passes(check_run):
    r = check_run
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert out.startswith("lstmc self-check")
    for key in ("lstmc", "python", "platform", "numpy", "scipy", "BLAS", "threads", "plans"):
        assert re.search(r"^  %s\s+\S" % key, out, re.MULTILINE), key
    # One plan line per benchmark shape, each naming its threads, split and product.
    plans = re.findall(r"^  (?:plans)?\s+(\(\d+,\d+,\d+,\d+\)) float32: (\d+) threads?, "
                       r"split by (rows|units).*recurrent product m = ", out, re.MULTILINE)
    assert len(plans) == 4, out
    ok = [line for line in out.splitlines() if line.startswith("  ok ")]
    assert len(ok) == 8
    assert sum("float32" in line for line in ok) == 3
    assert sum("lengths" in line for line in ok) == 2
    assert sum("central differences" in line for line in ok) == 2
    assert "FAIL" not in out
    assert out.rstrip().endswith("all 8 checks passed")


def test_check_reports_blas_with_threadpoolctl(check_run):
    require("threadpoolctl", "lstmc[test]")       # in the test extra: never skips in CI
    assert "the one lstmc calls" in check_run.stdout
    assert re.search(r"BLAS\s+\w+ \S+, .*threads", check_run.stdout)


def test_check_fails_on_wrong_math(monkeypatch):
    # A layer computing the seed's bug (c_prev cached as h_next) must fail the check.
    import io

    from lstmc import _check

    real = _check.ref_step_backward

    def skewed(dh, dc, cache, Wx, Wh):
        x, h_prev, c_prev, f, g, i, o, c = cache
        return real(dh, dc, (x, h_prev, o * 0.5, f, g, i, o, c), Wx, Wh)

    monkeypatch.setattr(_check, "ref_step_backward", skewed)
    out = io.StringIO()
    assert _check.main([], out=out) == 1
    text = out.getvalue()
    assert "FAIL" in text and "checks FAILED" in text
