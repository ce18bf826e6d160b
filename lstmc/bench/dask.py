"""The Dask section: what distribution costs.

One scoring job (N sequences of T steps, D = H, float32, batch chunks of `rows`) is
timed six ways, in alternating rounds like every other section, and each contender's
median is reported as sequences per second, next to its ratio to the single-process,
single-thread forward (so a perfect two-worker cluster would show 2.00x):

* ``TimeLSTM.forward``: one call over the whole array in this process, on one thread
  (``lstmc.threads(1)``; the BLAS pools pinned too where threadpoolctl can);
* ``dask, synchronous``: ``lstmc.dask.predict(...).compute(scheduler="sync")``, the
  same process and thread, block after block: Dask's graph overhead alone;
* ``LocalCluster, input from client``: two worker processes (1 Dask thread each,
  BLAS pinned to 1 thread by the nanny, lstmc at its default threads, which the row
  says) on loopback; the input lives in this process and
  travels to the workers, the hidden states travel back: the whole cost of handing
  the job to a cluster;
* ``LocalCluster, input on workers``: the same, with the input persisted on the
  workers beforehand (as when the workers read it from Zarr or a shared file): only
  the results travel; and the same with ``last_only=True`` (only the last step's h
  travels back: N x H instead of N x T x H);
* ``TimeLSTM.forward, lstmc threads``: the whole-array forward on lstmc's own threads
  (its default: one per core), for reference: what one process gets from the same
  cores without Dask.

Every contender's result is compared with the forward's (``agrees``): ``exact``
when bit for bit, ``within <tol>`` at the tolerance lstmc promises (blocks of
other row counts, and BLAS with other thread counts, sum in another order), else
``NO``.
The cluster's start-up is timed once, and not included in the figures. Skipped with
a line when the ``dask`` extra is not installed.
"""
import functools
import time
import warnings

import numpy as np

import lstmc
from lstmc import _blas_threads
from lstmc.bench.compare import collect_errors
from lstmc.bench.environment import blas_threads, cores, load
from lstmc.bench.report import say, table
from lstmc.bench.timing import Contender, error_text, loop, median, run_rounds

__all__ = ["run", "FULL", "QUICK"]

FULL = dict(N=4096, T=50, D=64, H=64, rows=256, rounds=5)
QUICK = dict(N=512, T=20, D=32, H=32, rows=64, rounds=3)
LABEL = "dask"


def run(env, args, report):
    """Print the section; its rows (one dict per contender) go to report["dask"]."""
    say("")
    say("== Dask: batch inference with lstmc.dask.predict ==")
    try:
        import dask.array as da
        import distributed  # noqa: F401  (the cluster; imported where it starts)
        import lstmc.dask as ldask  # noqa: F401  (likewise)
    except ImportError:
        say("skipped: the dask bench needs the dask extra: pip install \"lstmc[dask]\"")
        report["dask"] = None
        return
    p = QUICK if args.quick else FULL
    N, T, D, H, rows = (p[k] for k in ("N", "T", "D", "H", "rows"))
    dtype = np.dtype(np.float32)
    rng = np.random.default_rng(0)
    layer = lstmc.TimeLSTM(*[(rng.standard_normal(s) * 0.3).astype(dtype)
                             for s in ((D, 4 * H), (H, 4 * H), (4 * H,))])
    x = rng.standard_normal((N, T, D)).astype(dtype)
    xs = da.from_array(x, chunks=(rows, T, D))
    with warnings.catch_warnings():
        # No dashboard, but the scheduler's HTTP endpoint still wants port 8787 on
        # loopback; and the client-side input is meant to travel inside the graph.
        warnings.filterwarnings("ignore", "Port 8787 is already in use", UserWarning)
        warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
        try:
            timed, worker_blas, startup = _time_on_cluster(layer, x, xs, p["rounds"],
                                                           args.target_ms / 1e3)
        except Exception as exc:
            env.failed.append((LABEL, "LocalCluster", error_text(exc)))
            say("failed: %s" % error_text(exc))
            report["dask"] = None
            return
    collect_errors(env, LABEL, [c for _, _, _, c in timed])
    base = median(timed[0][3])
    results = []
    for name, where, agrees, c in timed:
        sec = median(c)
        results.append(dict(name=name, where=where, seconds=sec,
                            seq_per_s=N / sec if sec else None,
                            vs_forward=base / sec if sec and base else None, agrees=agrees,
                            samples=c.samples, N=N, T=T, D=D, H=H, rows=rows,
                            dtype=dtype.name))
    say("dask: scoring N=%d sequences, T=%d, D=H=%d, %s, batch chunks of %d (%d blocks); "
        "%d alternating rounds, medians"
        % (N, T, D, dtype.name, rows, -(-N // rows), p["rounds"]))
    now = load()
    say("      %d cores, load average %.2f; BLAS threads: workers %s%s; LocalCluster "
        "start-up %.1f s (not counted)"
        % (cores(), float("nan") if now is None else now,
           "/".join(sorted(set(worker_blas.values()))),
           "" if _blas_threads.available() else
           " (threadpoolctl not installed: this process not pinned)", startup))
    say(table(["contender", "where", "seconds", "sequences/s", "vs forward", "agrees"],
              [[r["name"], r["where"], _fmt(r["seconds"], "%.3f"),
                _fmt(r["seq_per_s"], "{:,.0f}"), _fmt(r["vs_forward"], "%.2fx"),
                r["agrees"]] for r in results], left=2))
    report["dask"] = results


def _fmt(value, fmt):
    if value is None:
        return "-"
    return fmt.format(value) if "{" in fmt else fmt % value


def _pinned(fn):
    """fn, run on one thread: lstmc.threads(1), and the BLAS pools at one thread
    (when threadpoolctl can pin them)."""

    def run_pinned():
        with _blas_threads.limit(1), lstmc.threads(1):
            return fn()
    return run_pinned


def _agreement(got, want):
    """'exact', 'within <tol>' (lstmc's promised tolerance for the dtype), or 'NO'."""
    if np.array_equal(got, want):
        return "exact"
    tol = 1e-5 if want.dtype == np.float32 else 1e-12
    if np.allclose(got, want, rtol=tol, atol=tol):
        return "within %g" % tol
    return "NO"


def _time_on_cluster(layer, x, xs, rounds, target):
    """Start the cluster, check and time the contenders in alternating rounds, stop it.
    Returns [(name, where, agrees, Contender)], the workers' BLAS threads and the
    cluster's start-up time."""
    from distributed import Client, LocalCluster

    import lstmc.dask as ldask

    want = layer.forward(x, train=False)
    want_last = layer.h.copy()
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

        forward = functools.partial(layer.forward, x, train=False)
        on_cluster(xs)()            # a first block on each worker sets its threads
        one = "1 process x 1 thread"
        two = "2 processes x %s lstmc threads" % "/".join(
            sorted({str(n) for n in client.run(lstmc.get_num_threads).values()}))
        contenders = [
            ("TimeLSTM.forward", one, _pinned(forward)),
            ("dask, synchronous", one,
             _pinned(lambda: ldask.predict(layer, xs).compute(scheduler="sync"))),
            ("LocalCluster, input from client", two, on_cluster(xs)),
            ("LocalCluster, input on workers", two, on_cluster(on_workers)),
            ("  the same, last_only=True", two, on_cluster(on_workers, last_only=True)),
            ("TimeLSTM.forward, lstmc threads",
             "1 process x %d threads" % lstmc.get_num_threads(), forward),
        ]
        timed = [(name, where, _agreement(fn(), want_last if "last_only" in name else want),
                  Contender(name, loop(fn)))
                 for name, where, fn in contenders]
        run_rounds([c for _, _, _, c in timed], rounds, target)
        worker_blas = client.run(blas_threads)
    finally:
        client.close()
        cluster.close()
    return timed, worker_blas, startup
