"""The command line of ``python -m lstmc bench``: arguments, the order of the
sections, the time budget, the closing warnings and the JSON file."""
import json
import os
import sys
import time

import numpy as np

import lstmc
from lstmc import _blas_threads
from lstmc._cli import Parser, positive, unwritable
from lstmc.bench import cell, compare, dask, models, pipeline, seq, threads
from lstmc.bench.environment import ENV_VARS, OTHER_ENV_VARS, Env, load
from lstmc.bench.report import header, reproduce_command, say
from lstmc.bench.timing import MIN_ROUNDS, Budget

__all__ = ["main", "build_parser"]

PROG = "python -m lstmc bench"
COMPARISONS = (cell.SECTION, seq.SECTION, models.SECTION)

DEFAULT_ROUNDS = 9
QUICK_ROUNDS = 3
DEFAULT_TARGET_MS = 20.0
QUICK_TARGET_MS = 3.0
DEFAULT_MAX_MINUTES = 4.0
SET_UP_SECONDS = 30            # kept back from the budget for imports and set-up


def build_parser():
    p = Parser(
        prog=PROG,
        description="Benchmark lstmc.LSTM and lstmc.TimeLSTM against a NumPy "
        "implementation, torch and onnxruntime (when installed) and the compiled BLAS "
        "floor, in one process, in alternating rounds; print median times and ratios.")
    p.add_argument("--section",
                   choices=("cell", "seq", "models", "threads", "dask", "pipeline", "all"),
                   default="all", help="what to run (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="one small case per section, %d rounds, ~%g ms batches "
                   "(a smoke test, not a measurement)" % (QUICK_ROUNDS, QUICK_TARGET_MS))
    p.add_argument("--rounds", type=positive(int), metavar="N",
                   help="alternating rounds (default %d, %d with --quick)"
                   % (DEFAULT_ROUNDS, QUICK_ROUNDS))
    p.add_argument("--dtype", choices=("float32", "float64", "both"),
                   help="dtype(s) to run (default: cell both, seq and threads float32)")
    p.add_argument("--target-ms", type=positive(float), metavar="MS",
                   help="length of one timed batch (default %g, %g with --quick)"
                   % (DEFAULT_TARGET_MS, QUICK_TARGET_MS))
    p.add_argument("--max-minutes", type=float, default=DEFAULT_MAX_MINUTES, metavar="M",
                   help="time budget of the whole run (default %(default)s; 0: none): when "
                   "the machine is slow, cases stop after " + str(MIN_ROUNDS) + " rounds "
                   "or at their share of the budget (the 'rounds' column says how many ran)")
    p.add_argument("--json", metavar="PATH", help="write the medians and raw samples as JSON")
    p.add_argument("--torch-threads", type=positive(int), metavar="N",
                   help="torch.set_num_threads (default: the number of cores)")
    p.add_argument("--ort-threads", type=positive(int), metavar="N",
                   help="onnxruntime intra-op threads (default: the number of cores)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    p.add_argument("--no-onnxruntime", action="store_true",
                   help="skip onnxruntime even if installed")
    return p


def _dtypes(choice, default):
    if choice is None:
        return default
    if choice == "both":
        return (np.float32, np.float64)
    return (np.dtype(choice).type,)


def _runs(section, name):
    return section in (name, "all")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json is not None:  # before the benchmark, not after it
        reason = unwritable(args.json) if args.json else "empty path"
        if reason:
            parser.error("argument --json: cannot write %s: %s" % (args.json, reason))
    environ = dict(os.environ)
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.target_ms is None:
        args.target_ms = QUICK_TARGET_MS if args.quick else DEFAULT_TARGET_MS
    if hasattr(sys.stdout, "reconfigure"):
        try:
            sys.stdout.reconfigure(errors="backslashreplace")
        except Exception:
            pass
    start = time.perf_counter()
    env = Env(args)
    comparisons = [c for c in COMPARISONS if _runs(args.section, c.name)]
    n_cases = (sum(len(c.shapes(args.quick)) * len(_dtypes(args.dtype, c.dtypes))
                   for c in comparisons) + _runs(args.section, "threads")
               + (pipeline.n_cases(args.quick) if _runs(args.section, "pipeline") else 0))
    env.budget = Budget(max(0.0, args.max_minutes * 60 - SET_UP_SECONDS)
                        if args.max_minutes > 0 else None, n_cases)
    say(header(env, args))
    report = {"meta": {"argv": argv, "rounds": args.rounds, "target_ms": args.target_ms,
                       "lstmc": lstmc.__version__, "numpy": np.__version__,
                       "torch": env.torch.__version__ if env.torch else None,
                       "onnxruntime": env.ort.__version__ if env.ort else None,
                       "torch_threads": env.torch_threads, "ort_threads": env.ort_threads,
                       "cores": env.cores,
                       "env": {k: os.environ.get(k) for k in ENV_VARS + OTHER_ENV_VARS},
                       "blas": _blas_threads.pools(), "skipped": env.skipped,
                       "max_minutes": args.max_minutes},
              "cell": [], "seq": [], "models": [], "threads": None, "dask": None, "pipeline": None}
    for section in comparisons:
        compare.run(env, args, section, _dtypes(args.dtype, section.dtypes),
                    report[section.name])
    if _runs(args.section, "threads"):
        K, shape = threads.QUICK_CASE if args.quick else threads.CASE
        threads.run(env, args, K, shape, _dtypes(args.dtype, (np.float32,))[0], report)
    if _runs(args.section, "dask"):
        dask.run(env, args, report)
    if _runs(args.section, "pipeline"):
        pipeline.run(env, args, report)
    say("")
    loads = [x for x in (env.load_start, load()) if x is not None]
    if loads and max(loads) > 0.5 * env.cores:
        say("WARNING: load average %s on %d cores: other processes competed for the CPU "
            "during this run, so single figures are unreliable (see the noise lines; "
            "--json has every sample)." % (" -> ".join("%.2f" % x for x in loads), env.cores))
    if env.failed:
        say("FAILURES (these contenders were not timed, or computed something else):")
        for label, key, err in env.failed:
            say("  %s, %s: %s" % (label, key, err))
    report["meta"]["failed"] = env.failed
    report["meta"]["seconds"] = time.perf_counter() - start
    status = 1 if env.failed else 0
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
        except OSError as exc:  # e.g. the disk filled up meanwhile
            print("%s: error: cannot write --json %s: %s"
                  % (PROG, args.json, exc.strerror or exc), file=sys.stderr)
            status = 1
        else:
            say("raw medians and samples written to %s" % args.json)
    say("total time %.0f s" % (time.perf_counter() - start))
    say(reproduce_command(argv, environ))
    return status
