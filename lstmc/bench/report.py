"""What the benchmark prints and writes: fixed-width tables, times and ratios as text,
targets with ok/MISS, the noise line, the header, the JSON record of a case, and
the command that reproduces the run."""
import os
import platform
import shlex
import sys
import time

import numpy as np

import lstmc
from lstmc import _blas_threads
from lstmc.bench.environment import ENV_VARS, OTHER_ENV_VARS, load
from lstmc.bench.timing import MIN_ROUNDS, median, spread

__all__ = ["say", "fmt_us", "fmt_ratio", "table", "header", "reproduce_command", "record",
           "target_lines", "spread_line", "progress"]


def say(*args):
    print(*args, flush=True)


def fmt_us(seconds):
    if seconds is None:
        return "-"
    us = seconds * 1e6
    if us < 10:
        return "%.2f" % us
    if us < 100:
        return "%.1f" % us
    return "{:,.0f}".format(us)


def fmt_ratio(r):
    if r is None:
        return "-"
    if r < 10:
        return "%.2fx" % r
    return "%.1fx" % r


def table(headers, rows, groups=None, left=1):
    """Fixed-width text table: the first ``left`` columns left-aligned, others right.

    ``groups`` is an optional list of (title, number of columns) printed above the
    headers, each title centred over its columns.
    """
    cols = len(headers)
    widths = [max(len(str(headers[j])), *(len(str(r[j])) for r in rows)) if rows
              else len(str(headers[j])) for j in range(cols)]
    sep = "  "
    lines = []
    if groups:
        start = 0
        spans = []
        for title, span in groups:
            w = sum(widths[start:start + span]) + len(sep) * (span - 1)
            if span and len(title) > w:  # widen the last column of the group
                widths[start + span - 1] += len(title) - w
                w = len(title)
            spans.append((title, w))
            start += span
        lines.append(sep.join(t.center(w) if t else " " * w for t, w in spans).rstrip())

    def line(cells):
        out = []
        for j, cell in enumerate(cells):
            cell = str(cell)
            out.append(cell.ljust(widths[j]) if j < left else cell.rjust(widths[j]))
        return sep.join(out).rstrip()

    lines.append(line(headers))
    lines.append(sep.join("-" * w for w in widths))
    lines.extend(line(r) for r in rows)
    return "\n".join(lines)


def _blas_lines():
    if not _blas_threads.available():
        return ["BLAS:      threadpoolctl not installed, libraries unknown"]
    # SciPy's pool first: the one lstmc calls.
    pools = sorted(_blas_threads.pools(), key=lambda p: _blas_threads.owner(p) != "scipy")
    return ["BLAS:      %s%s" % (_blas_threads.describe(pool),
                                 ", used by lstmc" if _blas_threads.owner(pool) == "scipy" else "")
            for pool in pools]


def header(env, args):
    """The lines above the tables: versions, machine, BLAS, environment, threads, method."""
    now = load()
    lines = ["lstmc benchmark  (%s)" % time.strftime("%Y-%m-%d %H:%M:%S"),
             "versions:  " + ", ".join(env.versions()),
             "machine:   %s, %s, %d cores available to this process%s"
             % (platform.platform(), platform.machine(), env.cores,
                "" if now is None else ", load average %.2f" % now)]
    lines += _blas_lines()
    env_vals = ["%s=%s" % (k, os.environ.get(k, "unset")) for k in ENV_VARS]
    env_vals += ["%s=%s" % (k, os.environ[k]) for k in OTHER_ENV_VARS if k in os.environ]
    lines.append("env:       " + "  ".join(env_vals))
    import lstmc

    thr = ["lstmc %d (n=1 columns: lstmc.threads(1))" % lstmc.get_num_threads()]
    thr.append("torch.set_num_threads(%d)" % env.torch_threads if env.torch else "torch -")
    thr.append("onnxruntime intra_op_num_threads=%d" % env.ort_threads if env.ort
               else "onnxruntime -")
    lines.append("threads:   " + ", ".join(thr) + "; OpenBLAS pools at their defaults "
                 "(listed above; SciPy's held at 1 by lstmc during its calls; NumPy's pinned "
                 "to 1 only in the pipeline section's pinned rows)")
    lines.append("method:    %d alternating rounds (at least %d within a %s budget), "
                 "batches of ~%g ms, median per call;\n"
                 "           ratios > 1 favour lstmc except x/floor (lstmc / its BLAS floor)"
                 % (args.rounds, min(MIN_ROUNDS, args.rounds),
                    "%g min" % args.max_minutes if args.max_minutes > 0 else "no time",
                    args.target_ms))
    if env.skipped:
        lines.append("skipped:   " + "; ".join("%s (%s)" % s for s in env.skipped))
    return "\n".join(lines)


def reproduce_command(argv, environ=None):
    """The command line that reruns this benchmark, with the environment variables
    that matter as they were when it started (Dask's workers set some later)."""
    environ = os.environ if environ is None else environ
    parts = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(lstmc.__file__)))
    installed = "site-packages" in root or "dist-packages" in root
    prefix = "" if installed else "cd %s && " % shlex.quote(root)
    env = ["%s=%s" % (k, shlex.quote(environ[k])) for k in ENV_VARS + OTHER_ENV_VARS
           if k in environ]
    if not installed:
        env.append("PYTHONPATH=.")
    parts.extend(env)
    parts.append(shlex.quote(sys.executable))
    parts.extend(["-m", "lstmc", "bench"])
    parts.extend(shlex.quote(a) for a in argv)
    cmd = prefix + " ".join(parts)
    lines = ["How to reproduce: " + cmd]
    if any(k in environ for k in ENV_VARS):
        unset = " ".join("-u %s" % k for k in ENV_VARS if k in environ)
        lines.append("  (the targets assume the OpenBLAS variables unset: "
                     "prefix the command with `env %s`)" % unset)
    return "\n".join(lines)


def record(label, shape, dtype, cs, rounds):
    """A case's JSON record: its medians, every sample and the round it came from."""
    return {"case": label, "shape": list(shape), "dtype": np.dtype(dtype).name,
            "median_us": {c.key: (median(c) * 1e6 if median(c) is not None else None)
                          for c in cs},
            "min_us": {c.key: (min(c.samples) * 1e6 if c.samples else None) for c in cs},
            "samples_us": {c.key: [s * 1e6 for s in c.samples] for c in cs},
            "sample_rounds": {c.key: list(c.rounds) for c in cs},
            "reps": {c.key: c.reps for c in cs},
            "errors": {c.key: c.error for c in cs if c.error},
            "rounds": rounds}


def target_lines(targets, ratios_by_case):
    """Rows 'case  ratio  wanted  measured  ok/MISS' for the targets of the cases run."""
    out = []
    for case, checks in targets.items():
        if case not in ratios_by_case:
            continue
        ratios = ratios_by_case[case]
        for col, op, bound in checks:
            r = ratios.get(col)
            if r is None:
                verdict, shown = "n/a", "-"
            else:
                ok = r >= bound if op == ">=" else r <= bound
                verdict, shown = ("ok" if ok else "MISS"), fmt_ratio(r)
            out.append([str(case).replace(" ", ""), col, "%s %s" % (op, bound), shown,
                        verdict])
    return out


def spread_line(results):
    """'noise: ...': the typical and the worst round-to-round spread of (label, cs) cases."""
    vals = []
    for label, cs in results:
        for c in cs:
            s = spread(c)
            if s is not None:
                vals.append((s, label, c.key))
    if not vals:
        return None
    vals.sort()
    s_med = vals[len(vals) // 2][0]
    worst = vals[-1]
    return ("noise: round-to-round spread (IQR / median) %.0f%% typical, worst %.0f%% (%s, %s)"
            % (s_med * 100, worst[0] * 100, worst[2], worst[1]))


def progress(label):
    """A progress callback for run_rounds, writing 'round r/n' to a terminal's stderr."""
    if not sys.stderr.isatty():
        return None

    def show(r, rounds):
        sys.stderr.write("\r  %s: round %d/%d " % (label, r, rounds))
        if r == rounds:
            sys.stderr.write("\r" + " " * (len(label) + 24) + "\r")
        sys.stderr.flush()
    return show
