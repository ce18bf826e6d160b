"""What the command-line entry points share: usage errors as one line on stderr
with exit code 2 (never a traceback), number-argument converters, and the check
of an output path made before any work starts."""
import argparse
import os


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, "%s: error: %s (see %s --help)\n" % (self.prog, message, self.prog))


def positive(kind):
    """An argparse type: a number of `kind` (int, float) that is > 0."""
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a number" % text)
        if not value > 0:
            raise argparse.ArgumentTypeError("must be positive, got %s" % text)
        return value
    convert.__name__ = kind.__name__
    return convert


def nonnegative_int(text):
    """An argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0, got %s" % text)
    return value


def unwritable(path):
    """Why a file cannot be written at ``path`` (a short reason), or None when it
    looks writable: its directory exists and may be written to, and ``path`` is
    not a directory nor a read-only file. Checked before the work whose result
    goes there, so a typo does not cost a whole run; nothing is created."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return "directory %s does not exist" % parent
    if os.path.isdir(path):
        return "is a directory"
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            return "permission denied"
    elif not os.access(parent, os.W_OK | os.X_OK):
        return "directory %s is not writable" % parent
    return None
