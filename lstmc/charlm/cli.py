"""The demo's command line: ``lstmc`` (or ``python -m lstmc``) with no command.

Usage errors, and a corpus, output path or model size that cannot work, are one
line on stderr and exit code 2, never a traceback.
"""

import sys

from lstmc._cli import Parser, nonnegative_int, positive
from lstmc.charlm.config import (DEFAULT_BATCH, DEFAULT_BPTT, DEFAULT_HIDDEN, DEFAULT_SECONDS,
                                 DEFAULT_STEPS, Config, UsageError)
from lstmc.charlm.training import run

__all__ = ["main", "parser"]


def parser(prog="lstmc"):
    p = Parser(
        prog=prog,
        description="Train a character-level language model whose recurrent layer is "
        "lstmc.TimeLSTM (embedding, affine, softmax and Adam in plain NumPy), report "
        "validation perplexity against a unigram baseline, and sample some text.",
        epilog="other commands: '%s check' self-tests this build; '%s bench' runs "
        "benchmarks; '%s convert SRC DST' converts a model between .onnx, a torch "
        ".pt state_dict and lstmc's .npz." % (prog, prog, prog))
    p.add_argument("--corpus", metavar="FILE",
                   help="UTF-8 text to learn (default: the Python help topics in pydoc_data)")
    p.add_argument("--hidden", type=positive(int), default=DEFAULT_HIDDEN, metavar="H",
                   help="LSTM hidden size (default %(default)s)")
    p.add_argument("--steps", type=positive(int), metavar="N",
                   help="train exactly N steps, with no time limit (default: up to %d steps "
                   "or %g s, whichever comes first)" % (DEFAULT_STEPS, DEFAULT_SECONDS))
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
    p.add_argument("--batch", type=positive(int), default=DEFAULT_BATCH, metavar="N",
                   help="parallel text streams per step (default %(default)s)")
    p.add_argument("--bptt", type=positive(int), default=DEFAULT_BPTT, metavar="T",
                   help="characters per stream per step (default %(default)s)")
    p.add_argument("--threads", type=nonnegative_int, metavar="N",
                   help="threads lstmc runs the LSTM on (default: lstmc's, the cores this "
                   "process may use, or LSTMC_NUM_THREADS; 0: the same)")
    p.add_argument("--temperature", type=positive(float), default=0.8, metavar="X",
                   help="sampling temperature (default %(default)s)")
    p.add_argument("--length", type=nonnegative_int, default=320, metavar="N",
                   help="characters to sample (default %(default)s)")
    return p


def main(argv=None, prog="lstmc"):
    """Parse ``argv`` (default: sys.argv[1:]), run the demo, return the exit code.
    ``prog`` is the command as the user typed it, for help and error lines."""
    args = parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")  # a sample may hold any character
    try:
        return run(Config(**vars(args)), prog=prog)  # the options are Config's fields
    except UsageError as exc:
        print("%s: error: %s" % (prog, exc), file=sys.stderr)
        return 2
    except MemoryError as exc:  # what check_memory could not foresee
        print("%s: error: out of memory%s (lower --hidden, --batch or --bptt)"
              % (prog, ": %s" % exc if str(exc) else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, after training stopped
        print("%s: interrupted" % prog, file=sys.stderr)
        return 130
