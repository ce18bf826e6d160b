"""What the command-line entry points share: usage errors as one line on stderr
with exit code 2 (never a traceback), and number-argument converters."""
import argparse


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
