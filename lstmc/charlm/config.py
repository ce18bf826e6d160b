"""What one run of the demo can be told: its settings and defaults, the options
of a run (``Config``), and the error for unusable ones (``UsageError``)."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["UsageError", "Config"]

# Defaults sized so that the whole run (training, validation, sampling) ends within
# about a minute on a two-core laptop: the step budget is what a typical machine
# reaches, the time budget stops a slow one.
DEFAULT_HIDDEN = 128
DEFAULT_STEPS = 2000
DEFAULT_SECONDS = 45.0
DEFAULT_BATCH = 32  # parallel streams
DEFAULT_BPTT = 32  # characters per stream per step (truncation length)
EMBED_MAX = 64
LEARNING_RATE = 0.01
LR_FLOOR = 0.1  # the rate decays to this fraction of LEARNING_RATE by the end
MAX_GRAD_NORM = 5.0
VALID_FRACTION = 0.10
VALID_MAX_CHARS = 200_000  # validation reads at most this much of the held-out text
PRIME = "The "


class UsageError(Exception):
    """A problem with the arguments or the corpus: one line on stderr, exit code 2."""


@dataclasses.dataclass
class Config:
    """Options of one training run (the command-line flags, already checked).

    The budget is ``max_steps`` and ``max_seconds`` (None: no such limit), derived
    from ``steps`` and ``seconds``: both None gives the default budget, and an
    explicit step count wins over time, so equal ``steps`` give equal runs.
    """

    corpus: str | None = None  # a UTF-8 file; None: the Python help topics
    hidden: int = DEFAULT_HIDDEN
    steps: int | None = None
    seconds: float | None = None
    seed: int = 0
    dtype: np.dtype = "float32"
    save: str | None = None  # where to save the trained TimeLSTM
    plot: str | None = None  # where to write the loss curve
    batch: int = DEFAULT_BATCH
    bptt: int = DEFAULT_BPTT
    lr: float = LEARNING_RATE
    temperature: float = 0.8
    length: int = 320  # characters to sample
    threads: int | None = None  # lstmc's threads; None or 0: lstmc's default

    def __post_init__(self):
        self.dtype = np.dtype(self.dtype)
        self.seconds_ignored = self.steps is not None and self.seconds is not None
        if self.steps is None and self.seconds is None:
            self.max_steps, self.max_seconds = DEFAULT_STEPS, DEFAULT_SECONDS
        elif self.steps is not None:
            self.max_steps, self.max_seconds = self.steps, None
        else:
            self.max_steps, self.max_seconds = None, self.seconds
