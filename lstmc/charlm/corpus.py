"""The text the demo learns, as character ids.

The default corpus is the English text of the standard library's
``pydoc_data.topics`` (the pages ``help("if")`` shows), so the demo needs no
download. Any UTF-8 file can be used instead with ``--corpus``.
"""

import math
import os
import sys

import numpy as np

from lstmc.charlm.config import VALID_FRACTION, UsageError
from lstmc.charlm.report import fmt_int

__all__ = ["Corpus", "load_corpus"]


class Corpus:
    """A text cut into character ids: ``train`` (all but the last 10%), ``valid``
    (the last 10%, held out), ``chars`` (the vocabulary: id -> character), and
    ``source`` and ``size`` (what it is, how many characters) for the report.

    Raises UsageError when the training part is shorter than one batch of
    ``batch`` streams of ``bptt`` characters.
    """

    def __init__(self, text, source, batch, bptt):
        self.source, self.size = source, len(text)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # one code point each
        table, ids = np.unique(codes, return_inverse=True)
        ids = ids.reshape(-1).astype(np.intp)
        self.chars = [chr(c) for c in table]
        n_valid = max(2, int(round(len(ids) * VALID_FRACTION)))
        self.train, self.valid = ids[:-n_valid], ids[-n_valid:]
        need = batch * bptt + 1
        if len(self.train) < need:
            total = need + int(math.ceil(need * VALID_FRACTION / (1 - VALID_FRACTION)))
            raise UsageError(
                "corpus too short: %s characters, one batch of %d streams x %d characters "
                "needs about %s (lower --batch or --bptt)"
                % (fmt_int(len(text)), batch, bptt, fmt_int(total)))


def load_corpus(path, batch, bptt):
    """The Corpus of the UTF-8 file at ``path`` (None: the Python help topics);
    raise UsageError on an unusable file."""
    if path is None:
        import pydoc_data.topics as topics

        text = "\n".join(topics.topics.values())
        ver = "%d.%d" % sys.version_info[:2]
        source = "Python %s help topics (pydoc_data.topics, %d pages)" % (
            ver, len(topics.topics))
        return Corpus(text, source, batch, bptt)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise UsageError("corpus %s is not UTF-8 text (%s)" % (path, exc.reason))
    except OSError as exc:
        raise UsageError("cannot read corpus %s: %s" % (path, exc.strerror or exc))
    if not text:
        raise UsageError("corpus %s is empty" % path)
    return Corpus(text, os.path.basename(path) or path, batch, bptt)
