"""The ``lstmc`` command (also ``python -m lstmc``): dispatch only.

    lstmc [options]        train a small character-level language model (lstmc.charlm)
    lstmc check [options]  self-test the installed build (lstmc._check)
    lstmc bench [options]  benchmarks (lstmc.bench)
    lstmc convert SRC DST  a trained LSTM between torch .pt, .onnx and lstmc .npz
                           files (lstmc._convert_cli)

Each command's module is imported only when that command runs. Usage errors are
one line on stderr and exit code 2, never a traceback.
"""

import os
import sys


def main(argv=None, prog="lstmc"):
    """Run the command in ``argv`` (default: sys.argv[1:]); return the exit code.
    ``prog`` is how the user called lstmc, for help and error lines."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command == "check":
        from lstmc._check import main as check_main

        return check_main(argv[1:])
    if command == "convert":
        from lstmc._convert_cli import main as convert_main

        return convert_main(argv[1:], prog="%s convert" % prog)
    if command == "bench":
        try:
            from lstmc.bench import main as bench_main
        except ModuleNotFoundError as exc:
            if exc.name != "lstmc.bench":
                raise
            print("%s: error: 'bench' is not available in this build" % prog, file=sys.stderr)
            return 2
        return bench_main(argv[1:])
    from lstmc.charlm.cli import main as charlm_main

    return charlm_main(argv, prog=prog)


def entry(prog="lstmc"):
    """The console script ``lstmc``: run main() and exit with its code."""
    try:
        code = main(prog=prog)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    entry(prog="python -m lstmc")
