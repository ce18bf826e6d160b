"""Run a scenario in a child interpreter, so that a crash fails one test
instead of killing pytest.

``run(code, *args)`` starts ``python -c code args...`` with the same
interpreter, importing the same lstmc as the tests (the directory that holds
the installed package comes first on the child's PYTHONPATH, then this
folder, so the child can ``from reference import ...`` too). It returns the
child's stdout; a child killed by a signal (a segfault), one that does not
exit within ``timeout`` seconds, and one that exits with another code than
``0`` fail the test, with the child's stderr in the message.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import lstmc

__all__ = ["TESTS", "child_env", "run"]

#: this folder: the child's working directory (it holds no lstmc package, so
#: the child cannot pick up a source checkout instead of the installed one)
TESTS = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(lstmc.__file__)))


def child_env(extra=None):
    """os.environ with the PYTHONPATH described above, updated with `extra`."""
    env = dict(os.environ)
    path = [_PACKAGE_PARENT, TESTS]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.setdefault("PYTHONFAULTHANDLER", "1")     # a crash shows where in the child
    env.update(extra or {})
    return env


def _tail(text, limit=6000):
    text = text or ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text if len(text) <= limit else "...\n" + text[-limit:]


def run(code, *args, timeout=120, env=None):
    """stdout of ``python -c code *args``; fails the test on a crash, a hang or
    a non-zero exit code (an assertion that failed in the child)."""
    cmd = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    try:
        proc = subprocess.run(cmd, cwd=TESTS, env=child_env(env), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child did not exit within {timeout} s (hung); its stderr:\n"
                    f"{_tail(exc.stderr)}", pytrace=False)
    rc = proc.returncode
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        pytest.fail(f"the child crashed ({name}); its stderr:\n{_tail(proc.stderr)}",
                    pytrace=False)
    if rc != 0:
        pytest.fail(f"the child exited with code {rc}; its stderr:\n{_tail(proc.stderr)}",
                    pytrace=False)
    return proc.stdout
