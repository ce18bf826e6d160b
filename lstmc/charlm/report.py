"""What the demo prints and draws: the header before training, the progress bar,
the results, the sample, and the loss-curve plot.

The report's functions return lines and the caller prints them; Progress alone
writes to its stream itself, since on a terminal it redraws one line in place.
"""

import math

import numpy as np

import lstmc
from lstmc.charlm.config import LR_FLOOR, MAX_GRAD_NORM, VALID_FRACTION, VALID_MAX_CHARS


def fmt_int(n):
    return "{:,}".format(n)


def fmt_bytes(n):
    """1536 -> '1.5 KiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" if unit == "bytes" else "%.1f %s") % (n, unit)
        n /= 1024


def fmt_time(seconds):
    if seconds < 60:
        return "%.1f s" % seconds
    return "%d min %02d s" % divmod(int(round(seconds)), 60)


def printable(text):
    """Newlines kept; anything else that would not print shown as an escape."""
    return "".join(ch if ch.isprintable() or ch == "\n"
                   else ch.encode("unicode_escape").decode("ascii") for ch in text)


def sample_lines(text, width=96):
    """Display lines of a sample: printable, right-stripped, long lines wrapped."""
    lines = []
    for line in printable(text).split("\n"):
        line = line.rstrip()
        while len(line) > width:
            cut = line.rfind(" ", width // 2, width + 1)  # prefer to wrap at a space
            if cut <= 0:
                cut = width
            lines.append(line[:cut].rstrip())
            line = line[cut:].lstrip(" ")
        lines.append(line)
    return lines


def describe_budget(cfg):
    if cfg.max_steps and cfg.max_seconds:
        return "up to %s steps or %s, whichever comes first" % (
            fmt_int(cfg.max_steps), fmt_time(cfg.max_seconds))
    if cfg.max_steps:
        text = "%s steps (no time limit)" % fmt_int(cfg.max_steps)
        if cfg.seconds_ignored:
            text += "; --seconds ignored because --steps is given"
        return text
    return "%s (no step limit)" % fmt_time(cfg.max_seconds)


def header(cfg, corpus, model, threads_label):
    """What is about to be trained, on what, and for how long."""
    V, D, H = model.sizes
    return [
        "lstmc %s - character-level language model demo" % lstmc.__version__,
        "  corpus    %s: %s characters, %d distinct" % (corpus.source, fmt_int(corpus.size), V),
        "  split     %s to train on, %s held out for validation (the last %d%%)"
        % (fmt_int(len(corpus.train)), fmt_int(len(corpus.valid)), round(VALID_FRACTION * 100)),
        "  model     embedding %dx%d -> lstmc.TimeLSTM %d->%d -> affine %dx%d, %s, %s parameters"
        % (V, D, D, H, H, V, cfg.dtype.name, fmt_int(sum(p.size for p in model.params))),
        "  training  %d streams x %d characters per step (truncated BPTT), seed %d"
        % (cfg.batch, cfg.bptt, cfg.seed),
        "  optimizer Adam, lr %g with cosine decay to %g, gradient-norm clip %g, %s"
        % (cfg.lr, cfg.lr * LR_FLOOR, MAX_GRAD_NORM, threads_label),
        "  budget    " + describe_budget(cfg),
        ""]


def results(cfg, losses, seconds, interrupted, val_loss, unigram_loss, n_targets, n_valid):
    """How training went, and the validation perplexity next to the unigram
    baseline's, both measured on the same ``n_targets`` of the ``n_valid``
    held-out characters."""
    steps = len(losses)
    head = min(10, steps)
    tail = min(max(10, steps // 10), steps)
    first, last = sum(losses[:head]) / head, sum(losses[-tail:]) / tail
    why = ("interrupted by Ctrl-C" if interrupted else "step budget reached"
           if cfg.max_steps and steps >= cfg.max_steps else "time budget reached")
    val_ppl, uni_ppl = math.exp(val_loss), math.exp(unigram_loss)
    held_out = fmt_int(n_targets)
    if n_valid - 1 > VALID_MAX_CHARS:
        held_out += " of the %s" % fmt_int(n_valid - 1)
    lines = [
        "done      %s steps in %s (%s), %.1f steps/s, %s characters/s"
        % (fmt_int(steps), fmt_time(seconds), why, steps / seconds,
           fmt_int(int(steps * cfg.batch * cfg.bptt / seconds))),
        "  training loss   %.3f -> %.3f   (perplexity %.2f -> %.2f; "
        "mean of first %d / last %d steps)"
        % (first, last, math.exp(first), math.exp(last), head, tail),
        "  validation      perplexity %.2f on %s held-out characters (%.2f bits each)"
        % (val_ppl, held_out, val_loss / math.log(2)),
        "  unigram         perplexity %.2f from character frequencies alone (%.2f bits each)"
        % (uni_ppl, unigram_loss / math.log(2))]
    if val_ppl < uni_ppl:
        lines += [
            "  verdict         %.1fx better than the unigram baseline: on text it never saw, "
            "the model is" % (uni_ppl / val_ppl),
            "                  about as unsure as a pick among %.1f equally likely characters, "
            "not %.1f" % (val_ppl, uni_ppl)]
    else:
        lines.append("  verdict         not better than the unigram baseline yet: train longer "
                     "(--steps, --seconds)")
    return lines


def sample(cfg, prime, text):
    """The sampled text, after a blank line and a title."""
    title = "sample (temperature %g, seed %d, primed with %r):" % (
        cfg.temperature, cfg.seed, prime)
    return ["", title] + ["  | " + line for line in sample_lines(text)]


class Progress:
    """A one-line bar redrawn with \\r on a terminal; a line every 10% otherwise."""

    WIDTH = 20

    def __init__(self, stream, max_steps, max_seconds):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.max_steps, self.max_seconds = max_steps, max_seconds
        self.next_mark = 0.1
        self.last_draw = 0.0
        self.window = []  # losses since the last printed line
        self.drawn = False

    def fraction(self, step, elapsed):
        """How much of the budget (steps or seconds, whichever is further) is spent."""
        f = 0.0
        if self.max_steps:
            f = max(f, step / self.max_steps)
        if self.max_seconds:
            f = max(f, elapsed / self.max_seconds)
        return min(f, 1.0)

    def line(self, step, elapsed, loss):
        frac = self.fraction(step, elapsed)
        fill = int(round(frac * self.WIDTH))
        total = ("/%d" % self.max_steps) if self.max_steps else ""
        width = len(str(self.max_steps)) if self.max_steps else 5
        return "  step %*d%s [%s%s] %3d%%  loss %.3f  ppl %6.2f  %5.1f s" % (
            width, step, total, "#" * fill, "." * (self.WIDTH - fill), int(frac * 100),
            loss, math.exp(min(loss, 50.0)), elapsed)

    def update(self, step, elapsed, loss, last=False):
        self.window.append(loss)
        frac = self.fraction(step, elapsed)
        if self.tty:
            self.window = self.window[-20:]
            if last or elapsed - self.last_draw >= 0.1 or step == 1:
                avg = sum(self.window) / len(self.window)
                self.stream.write("\r" + self.line(step, elapsed, avg))
                self.stream.flush()
                self.last_draw = elapsed
                self.drawn = True
            return
        if frac + 1e-12 >= self.next_mark or last:
            avg = sum(self.window) / len(self.window)
            self.stream.write(self.line(step, elapsed, avg) + "\n")
            self.stream.flush()
            self.window = []
            while self.next_mark <= frac + 1e-12:
                self.next_mark += 0.1

    def close(self):
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(path, losses, val_loss, unigram_loss, title):
    """A PNG of the per-step training loss, its moving mean, and the validation and
    unigram losses as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, losses, lw=0.8, alpha=0.4, color="C0", label="training loss (per step)")
    k = max(1, len(losses) // 25)
    if len(losses) >= k:
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=2, color="C0", label="training loss (moving mean)")
    ax.axhline(val_loss, color="C2", ls="--", label="validation loss (end)")
    ax.axhline(unigram_loss, color="C3", ls=":", label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
