"""``python -m lstmc``: train a small character-level language model (default),
``python -m lstmc check``: self-test the installed build,
``python -m lstmc bench``: benchmarks.

This module only parses arguments and dispatches; the work lives in ``_train``,
``_check`` and ``_bench``, imported when needed. Usage errors are one line on
stderr and exit code 2, never a traceback.
"""

import os
import sys

from lstmc._cli import Parser, nonnegative_int, positive

PROG = "python -m lstmc"


def _train_parser():
    from lstmc import _train as t

    p = Parser(
        prog=PROG,
        description="Train a character-level language model whose recurrent layer is "
        "lstmc.TimeLSTM (embedding, affine, softmax and Adam in plain NumPy), report "
        "validation perplexity against a unigram baseline, and sample some text.",
        epilog="other commands: '%s check' self-tests this build; '%s bench' runs "
        "benchmarks." % (PROG, PROG))
    p.add_argument("--corpus", metavar="FILE",
                   help="UTF-8 text to learn (default: the Python help topics in pydoc_data)")
    p.add_argument("--hidden", type=positive(int), default=t.DEFAULT_HIDDEN, metavar="H",
                   help="LSTM hidden size (default %(default)s)")
    p.add_argument("--steps", type=positive(int), metavar="N",
                   help="train exactly N steps, with no time limit (default: up to %d steps "
                   "or %g s, whichever comes first)" % (t.DEFAULT_STEPS, t.DEFAULT_SECONDS))
    p.add_argument("--seconds", type=positive(float), metavar="S",
                   help="train for S seconds (ignored when --steps is given)")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed for the weights and the sample (default %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="floating type of all weights (default %(default)s)")
    p.add_argument("--save", metavar="PATH",
                   help="save the trained TimeLSTM weights there (lstmc.save; an .npz file)")
    p.add_argument("--plot", metavar="PATH",
                   help="write a PNG loss curve (needs matplotlib)")
    p.add_argument("--batch", type=positive(int), default=t.DEFAULT_BATCH, metavar="N",
                   help="parallel text streams per step (default %(default)s)")
    p.add_argument("--bptt", type=positive(int), default=t.DEFAULT_BPTT, metavar="T",
                   help="characters per stream per step (default %(default)s)")
    p.add_argument("--threads", type=nonnegative_int, metavar="N",
                   help="BLAS threads while training (default 1, fastest for these small "
                   "matrices; 0: the BLAS default; needs threadpoolctl)")
    p.add_argument("--temperature", type=positive(float), default=0.8, metavar="X",
                   help="sampling temperature (default %(default)s)")
    p.add_argument("--length", type=nonnegative_int, default=320, metavar="N",
                   help="characters to sample (default %(default)s)")
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check":
        from lstmc._check import main as check_main

        return check_main(argv[1:])
    if argv and argv[0] == "bench":
        try:
            from lstmc._bench import main as bench_main
        except ModuleNotFoundError as exc:
            if exc.name != "lstmc._bench":
                raise
            print("%s: error: 'bench' is not available in this build" % PROG, file=sys.stderr)
            return 2
        return bench_main(argv[1:])

    from lstmc import _train

    args = _train_parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # a sample may hold any character
    cfg = _train.Config(corpus=args.corpus, hidden=args.hidden, steps=args.steps,
                        seconds=args.seconds, seed=args.seed, dtype=args.dtype,
                        save=args.save, plot=args.plot, batch=args.batch, bptt=args.bptt,
                        temperature=args.temperature, length=args.length,
                        threads=args.threads)
    try:
        return _train.run(cfg)
    except _train.UsageError as exc:
        print("%s: error: %s" % (PROG, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, after training stopped
        print("%s: interrupted" % PROG, file=sys.stderr)
        return 130


def _entry():
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    _entry()
