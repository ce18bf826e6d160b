"""The threads section: K independent ``TimeLSTM`` inferences on one Python thread at
``lstmc.threads(1)``, on two Python threads at ``lstmc.threads(2)`` (the speed-up of
releasing the GIL), and on one Python thread at lstmc's default threads (the speed-up
of lstmc's own pool)."""
import functools
import threading

import numpy as np

import lstmc
from lstmc.bench.compare import collect_errors
from lstmc.bench.contenders import weights
from lstmc.bench.report import fmt_ratio, fmt_us, progress, record, say, spread_line, table
from lstmc.bench.timing import Contender, batched, median, ratio, run_rounds

__all__ = ["run", "CASE", "QUICK_CASE"]

CASE = (8, (8, 100, 128, 128))           # K layers, (N, T, D, H) each
QUICK_CASE = (4, (4, 20, 32, 32))


class _Workers:
    """n persistent threads; run(fn, chunks, reps) calls fn(chunks[j], reps) on thread j
    and waits for all."""

    def __init__(self, n):
        self.n = n
        self.go = [threading.Event() for _ in range(n)]
        self.done = [threading.Event() for _ in range(n)]
        self.job = None
        self.errors = []
        self.threads = [threading.Thread(target=self._work, args=(j,), daemon=True)
                        for j in range(n)]
        for t in self.threads:
            t.start()

    def _work(self, j):
        while True:
            self.go[j].wait()
            self.go[j].clear()
            job = self.job
            if job is None:
                self.done[j].set()
                return
            fn, chunks, reps = job
            try:
                fn(chunks[j], reps)
            except Exception as exc:
                self.errors.append(exc)
            self.done[j].set()

    def run(self, fn, chunks, reps):
        self.job = (fn, chunks, reps)
        for e in self.go:
            e.set()
        for e in self.done:
            e.wait()
            e.clear()
        if self.errors:
            raise self.errors.pop()

    def close(self):
        self.job = None
        for e in self.go:
            e.set()
        for t in self.threads:
            t.join()


def _infer(chunk, reps):
    for _ in range(reps):
        for layer, xs in chunk:
            layer.forward(xs, train=False)


def run(env, args, K, shape, dtype, report):
    N, T, D, H = shape
    say("")
    say("== Threads: K=%d independent TimeLSTM inferences, (N,T,D,H)=(%d,%d,%d,%d) %s =="
        % (K, N, T, D, H, np.dtype(dtype).name))
    rng = np.random.default_rng(3)
    jobs = []
    for _ in range(K):
        layer = lstmc.TimeLSTM(*weights(rng, D, H, dtype))
        jobs.append((layer, rng.standard_normal((N, T, D)).astype(dtype)))
    workers = {1: _Workers(1), 2: _Workers(2)}
    chunks = {1: [jobs], 2: [jobs[0::2], jobs[1::2]]}
    default = lstmc.get_num_threads()

    def contender(key, n, threads):
        return Contender(key, batched(functools.partial(workers[n].run, _infer, chunks[n]),
                                      functools.partial(lstmc.threads, threads)))

    cs = [contender("1 thread, lstmc n=1", 1, 1),
          contender("2 threads, lstmc n=2", 2, 2),
          contender("1 thread, lstmc default", 1, default)]
    try:
        done = run_rounds(cs, args.rounds, args.target_ms / 1e3, progress("threads"),
                          env.budget.case_deadline())
    finally:
        for w in workers.values():
            w.close()
    label = "threads K=%d (%d,%d,%d,%d) %s" % (K, N, T, D, H, np.dtype(dtype).name)
    collect_errors(env, label, cs)
    t1, t2, tb = (median(c) for c in cs)
    report["threads"] = record(label, (K, N, T, D, H), dtype, cs, done)
    report["threads"]["speedup_2_threads"] = ratio(t1, t2)
    report["threads"]["speedup_default"] = ratio(t1, tb)
    rows = [["1 Python thread", "1", fmt_us(t1), fmt_us(t1 / K if t1 else None),
             "1.00x" if t1 else "-"],
            ["2 Python threads", "2", fmt_us(t2), fmt_us(t2 / K if t2 else None),
             fmt_ratio(ratio(t1, t2))],
            ["1 Python thread", "%d (default)" % default, fmt_us(tb),
             fmt_us(tb / K if tb else None), fmt_ratio(ratio(t1, tb))]]
    say("median µs for all K inferences over %d alternating rounds; speed-up relative to "
        "1 Python thread at lstmc.threads(1) (%d cores available, ideal 2-thread speed-up "
        "%.2fx). With 2 Python threads at n=2 each call runs on its caller's thread "
        "(the limit counts every thread doing lstmc work)." % (done, env.cores,
                                                               min(2, env.cores)))
    say(table(["Python threads", "lstmc threads", "µs for K", "µs per layer", "speed-up"],
              rows, left=2))
    noise = spread_line([(label, cs)])
    if noise:
        say(noise)
