"""The Dask section of ``python -m lstmc bench``: what distribution costs.

One scoring job (N sequences of T steps, D = H, float32, batch chunks of `rows`)
is timed six ways, in alternating rounds (round r runs every contender once, the
order rotated by one each round), and the median per contender is reported as
sequences per second, next to its ratio to the single-process, single-thread
forward (so a perfect two-worker cluster would show 2.00x):

* ``TimeLSTM.forward``: one call over the whole array in this process, BLAS
  pinned to one thread like each worker (with threadpoolctl, the ``bench`` extra;
  without it, unpinned, and the table says so);
* ``dask, synchronous``: ``lstmc.dask.predict(...).compute(scheduler="sync")``,
  the same process and thread, block after block: Dask's graph overhead alone;
* ``LocalCluster, input from client``: two worker processes (1 thread each, BLAS
  pinned to 1 thread by the nanny) on loopback; the input lives in this process
  and travels to the workers, the hidden states travel back: the whole cost of
  handing the job to a cluster;
* ``LocalCluster, input on workers``: the same, with the input persisted on the
  workers beforehand (as when the workers read it from Zarr or a shared file):
  only the results travel; and the same with ``last_only=True`` (only the last
  step's h travels back: N x H instead of N x T x H);
* ``TimeLSTM.forward, BLAS threads``: the whole-array forward with OpenBLAS's
  own threads (one per core), for reference: what one process gets from the same
  cores without Dask. (On a loaded machine multi-threaded BLAS suffers most: each
  small gemm waits for all its threads.)

Every contender's result is checked against the forward's, bit for bit (``exact``).
The cluster's start-up is timed once, and not included in the figures.

Run alone: ``python -m lstmc._bench_dask [--quick]``.
"""
import os
import sys
import time
import warnings

import numpy as np

import lstmc

__all__ = ["main"]

FULL = dict(N=4096, T=50, D=64, H=64, rows=256, rounds=5)
QUICK = dict(N=512, T=20, D=32, H=32, rows=64, rounds=3)


def _table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if j < 2 else str(c).rjust(w)
                                   for j, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), "  ".join("-" * w for w in widths)]
                     + [line(r) for r in rows])


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def _pinned(fn):
    """fn, run with BLAS pinned to one thread (unpinned without threadpoolctl)."""
    tpc = _threadpoolctl()
    if tpc is None:
        return fn

    def run():
        with tpc.threadpool_limits(1, user_api="blas"):
            return fn()
    return run


def _blas_threads():
    tpc = _threadpoolctl()
    if tpc is None:
        return "?"
    return ",".join(sorted({str(i["num_threads"]) for i in tpc.threadpool_info()
                            if i.get("user_api") == "blas"})) or "?"


def _run(layer, x, xs, want, want_last, rounds, ldask, Client, LocalCluster):
    """Start the cluster, time the contenders in alternating rounds, stop it."""
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    client = Client(cluster)
    try:
        client.wait_for_workers(2, timeout=120)
        startup = time.perf_counter() - t0
        on_workers = client.persist(xs)
        client.gather(client.futures_of(on_workers))

        def on_cluster(arr, last_only=False):
            return lambda: client.compute(ldask.predict(layer, arr, last_only=last_only)) \
                .result(timeout=600)

        one = "1 process x 1 thread" if _threadpoolctl() else "1 process, BLAS unpinned"
        contenders = [
            ("TimeLSTM.forward", one, _pinned(lambda: layer.forward(x, train=False))),
            ("dask, synchronous", one,
             _pinned(lambda: ldask.predict(layer, xs).compute(scheduler="sync"))),
            ("LocalCluster, input from client", "2 processes x 1 thread", on_cluster(xs)),
            ("LocalCluster, input on workers", "2 processes x 1 thread", on_cluster(on_workers)),
            ("  the same, last_only=True", "2 processes x 1 thread",
             on_cluster(on_workers, last_only=True)),
            ("TimeLSTM.forward, BLAS threads", "1 process x %s threads" % _blas_threads(),
             lambda: layer.forward(x, train=False)),
        ]
        exact = {name: bool(np.array_equal(fn(), want_last if "last_only" in name else want))
                 for name, _, fn in contenders}  # also the warm-up
        samples = {name: [] for name, _, _ in contenders}
        for r in range(rounds):
            k = r % len(contenders)
            for name, where, fn in contenders[k:] + contenders[:k]:
                t = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t)
        worker_blas = client.run(_blas_threads)
    finally:
        client.close()
        cluster.close()
    where = {name: w for name, w, _ in contenders}
    return samples, where, exact, worker_blas, startup


def main(quick=False, out=sys.stdout):
    """Time the job; print the table to `out` (None: print nothing); return the rows:
    one dict per contender (name, seconds = median, seq_per_s, vs_forward, exact,
    samples, and the case: N, T, D, H, rows, dtype)."""
    try:
        import dask.array as da
        from distributed import Client, LocalCluster
        import lstmc.dask as ldask
    except ImportError as exc:
        raise ImportError("the dask bench needs the dask extra: "
                          "pip install \"lstmc[dask]\"") from exc
    say = (lambda *a: print(*a, file=out, flush=True)) if out is not None else (lambda *a: None)
    p = QUICK if quick else FULL
    N, T, D, H, rows, rounds = (p[k] for k in ("N", "T", "D", "H", "rows", "rounds"))
    dtype = np.dtype(np.float32)
    rng = np.random.default_rng(0)
    layer = lstmc.TimeLSTM(*[(rng.standard_normal(s) * 0.3).astype(dtype)
                             for s in ((D, 4 * H), (H, 4 * H), (4 * H,))])
    x = rng.standard_normal((N, T, D)).astype(dtype)
    xs = da.from_array(x, chunks=(rows, T, D))
    want = layer.forward(x, train=False)
    want_last = layer.h.copy()

    with warnings.catch_warnings():
        # No dashboard, but the scheduler's HTTP endpoint still wants port 8787 on
        # loopback; and the client-side input is meant to travel inside the graph.
        warnings.filterwarnings("ignore", "Port 8787 is already in use", UserWarning)
        warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
        samples, where, exact, worker_blas, startup = _run(
            layer, x, xs, want, want_last, rounds, ldask, Client, LocalCluster)

    base = float(np.median(next(iter(samples.values()))))
    results = []
    for name in samples:                          # the contenders, in order
        sec = float(np.median(samples[name]))
        results.append(dict(name=name, where=where[name], seconds=sec, seq_per_s=N / sec,
                            vs_forward=base / sec, exact=exact[name], samples=samples[name],
                            N=N, T=T, D=D, H=H, rows=rows, dtype=dtype.name))
    say("dask: scoring N=%d sequences, T=%d, D=H=%d, %s, batch chunks of %d (%d blocks); "
        "%d alternating rounds, medians" % (N, T, D, dtype.name, rows, -(-N // rows), rounds))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    say("      %d cores, load average %.2f; BLAS threads: workers %s%s; LocalCluster "
        "start-up %.1f s (not counted)"
        % (os.cpu_count() or 0, load, "/".join(sorted(set(worker_blas.values()))),
           "" if _threadpoolctl() is not None else
           " (threadpoolctl not installed: this process not pinned)", startup))
    say(_table(["contender", "where", "seconds", "sequences/s", "vs forward", "exact"],
               [[r["name"], r["where"], "%.3f" % r["seconds"], "{:,.0f}".format(r["seq_per_s"]),
                 "%.2fx" % r["vs_forward"], "yes" if r["exact"] else "NO"] for r in results]))
    return results


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
