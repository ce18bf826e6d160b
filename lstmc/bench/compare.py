"""A section that compares contenders case by case (the cell and the sequence): time
each case in alternating rounds, then print the time table, the ratio table, the
targets with ok/MISS and the noise line, and keep every case's JSON record.

A ratio is the median over the rounds of the ratio within each round (both batches
timed in the same round, seconds apart), not a ratio of two medians: on a shared
machine an absolute time means little, and a ratio taken in the same round cancels
the load of that moment.
"""
import dataclasses
from typing import Callable

import numpy as np

from lstmc.bench.report import (fmt_ratio, fmt_us, progress, record, say, spread_line,
                                table, target_lines)
from lstmc.bench.timing import median, paired_ratio, run_rounds

__all__ = ["Comparison", "run", "collect_errors"]


@dataclasses.dataclass(frozen=True)
class Comparison:
    name: str                 # in the case labels, and the key of the JSON report
    title: str
    note: str                 # what the time table's columns mean
    shape_head: str           # the shape column's header, e.g. "(N,D,H)"
    cases: tuple              # shapes
    quick_cases: tuple
    dtypes: tuple             # run when --dtype is not given
    columns: tuple            # the time table: ((group title, (contender key, ...)), ...)
    ratios: dict              # ratio column: (numerator key, denominator key)
    targets: dict             # shape: ((ratio column, ">=" or "<=", bound), ...), float32
    targets_title: str
    seed: int
    contenders: Callable      # (env, label, shape, dtype, rng) -> [Contender]

    def shapes(self, quick):
        return self.quick_cases if quick else self.cases


def collect_errors(env, label, cs):
    for c in cs:
        if c.error:
            env.failed.append((label, c.key, c.error))


def run(env, args, section, dtypes, records):
    """Run ``section``'s cases (its quick ones with --quick) for each dtype, append
    their JSON records to ``records`` and print the section."""
    say("")
    say(section.title)
    rng = np.random.default_rng(section.seed)
    keys = [k for _, group in section.columns for k in group]
    results, time_rows, ratio_rows, ratios_f32 = [], [], [], {}
    for dtype in dtypes:
        for shape in section.shapes(args.quick):
            case = "(" + ",".join(str(n) for n in shape) + ")"
            label = "%s %s %s" % (section.name, case, np.dtype(dtype).name)
            cs = section.contenders(env, label, shape, dtype, rng)
            done = run_rounds(cs, args.rounds, args.target_ms / 1e3, progress(label),
                              env.budget.case_deadline())
            collect_errors(env, label, cs)
            results.append((label, cs))
            by_key = {c.key: c for c in cs}
            ratios = {name: paired_ratio(by_key.get(a), by_key.get(b))
                      for name, (a, b) in section.ratios.items()}
            records.append(record(label, shape, dtype, cs, done))
            records[-1]["ratios"] = ratios
            if np.dtype(dtype) == np.float32:
                ratios_f32[shape] = ratios
            dt = "f32" if np.dtype(dtype) == np.float32 else "f64"
            time_rows.append([case, dt] + [fmt_us(median(by_key.get(k))) for k in keys]
                             + [done])
            ratio_rows.append([case, dt] + [fmt_ratio(r) for r in ratios.values()])
    say(section.note)
    say(table([section.shape_head, "dtype"] + [k.split()[-1] for k in keys] + ["rounds"],
              time_rows, left=2,
              groups=[("", 2)] + [(title, len(group)) for title, group in section.columns]
              + [("", 1)]))
    say("")
    say("ratios (contender / lstmc: > 1 means lstmc is faster; x/floor: lstmc / its BLAS "
        "floor, 1.00x is the floor)")
    say(table([section.shape_head, "dtype"] + list(section.ratios), ratio_rows, left=2))
    lines = target_lines(section.targets, ratios_f32)
    if lines:
        say("")
        say("%s (float32; stated for the OpenBLAS variables unset):" % section.targets_title)
        say(table([section.shape_head, "ratio", "target", "measured", ""], lines, left=3))
    noise = spread_line(results)
    if noise:
        say(noise)
