/*
 * lstmc's threads: a small pool of sleeping workers, and the bracket every
 * numeric call runs in.
 *
 * Why its own pool: lstmc runs inside NumPy programs whose OpenBLAS pools spin
 * after each call and share the cores. Splitting every per-step product across
 * threads (what BLAS's own threads do) puts a barrier in every step, so one
 * slow or descheduled thread stalls them all. lstmc instead splits a call into
 * coarse tasks (whole rows of the batch for every step, whole column blocks of
 * a weight gradient), which idle workers claim one at a time: a slow worker
 * costs its share, not a stall per step.
 *
 * The rules:
 *  - Idle workers sleep on a condition variable. A worker that finished a task
 *    watches for the next call for 0.1 ms before it sleeps, and a caller
 *    watches its helpers for 0.2 ms before it sleeps (waking a sleeping thread
 *    costs tens of µs, in a VM more): bounded, then nothing spins.
 *  - At most `limit` threads (lstmc_set_threads) run lstmc work at once, over
 *    every Python thread calling lstmc: a call waits for a slot for its own
 *    thread (lstmc_call_begin), and takes helper slots only while free.
 *  - While an lstmc call large enough for BLAS to thread runs, SciPy's
 *    OpenBLAS runs one thread per caller (its count is set to 1 and restored
 *    when the last such call ends), so BLAS never adds threads of its own. Found by dlsym in the library that holds
 *    SciPy's sgemm; if it is not OpenBLAS, its threads are left alone.
 *  - Task boundaries depend on the sizes and the thread limit only, never on
 *    which thread runs a task: results are bit-identical run to run.
 *  - A time loop split within each step (lstmc_parallel_steps) is one job:
 *    each thread goes through the steps, waits (spinning, briefly) for every
 *    task of step s - 1 to finish, then claims the tasks of step s still
 *    unclaimed, its own first. No lock and no wake-up per step; a thread that
 *    has not joined yet costs nothing (the others claim its tasks), one
 *    descheduled inside a task stalls the step (a step needs all of the step
 *    before).
 *  - Pieces made ahead (lstmc_ahead_*): a loop that uses pieces in order (one
 *    row's input projections) while another thread of the same job makes
 *    them; the loop makes a piece itself when nobody has taken it, and waits
 *    only for one a running thread is making.
 *  - After fork, the child starts with no workers (they did not survive) and
 *    free slots; workers are made again on first use.
 * Workers never touch Python, so interpreter exit does not wait for them.
 */
#ifndef LSTMC_POOL_H
#define LSTMC_POOL_H

#include <stddef.h>

typedef void (*lstmc_task_fn)(void *ctx, ptrdiff_t task);
typedef void (*lstmc_step_fn)(void *ctx, ptrdiff_t step, ptrdiff_t task);

/* Pieces made ahead of their use (lstmc_ahead_*): at most LSTMC_AHEAD_MAX
 * pieces, claimed in order by whichever thread is free, used in order by one. */
#define LSTMC_AHEAD_MAX 256
typedef struct lstmc_ahead {
    ptrdiff_t pieces;
    ptrdiff_t claimed;                   /* pieces claimed so far (atomic) */
    ptrdiff_t made[LSTMC_AHEAD_MAX];     /* 1 once piece k is made (atomic) */
} lstmc_ahead;

#if defined(_WIN32)

/* No pool on Windows: every call runs on its caller's thread. */
static int lstmc_limit = 1;
static void lstmc_call_begin(int pin) { (void) pin; }
static void lstmc_call_end(int pin) { (void) pin; }
static void lstmc_set_threads(int n) { lstmc_limit = n < 1 ? 1 : n; }
static int lstmc_get_threads(void) { return lstmc_limit; }
static int lstmc_pool_workers(void) { return 0; }
static int lstmc_bind_blas(const void *sym) { (void) sym; return 0; }
static int lstmc_blas_threads_now(void) { return -1; }
static int lstmc_blas_set_threads(int n) { (void) n; return -1; }
static void lstmc_blas_after_fork(void) {}
static void lstmc_pool_init(void) {}
static void lstmc_parallel(int threads, ptrdiff_t ntasks, lstmc_task_fn fn, void *ctx)
{
    (void) threads;
    for (ptrdiff_t i = 0; i < ntasks; i++) fn(ctx, i);
}
static void lstmc_parallel_steps(int threads, ptrdiff_t steps, ptrdiff_t per_step,
                                 lstmc_step_fn fn, void *ctx)
{
    (void) threads;
    for (ptrdiff_t s = 0; s < steps; s++)
        for (ptrdiff_t k = 0; k < per_step; k++) fn(ctx, s, k);
}
static void lstmc_ahead_ready(lstmc_ahead *q, ptrdiff_t k, lstmc_task_fn make, void *ctx)
{
    if (q->claimed <= k) {
        q->claimed = k + 1;
        make(ctx, k);
    }
}
static void lstmc_ahead_help(lstmc_ahead *q, lstmc_task_fn make, void *ctx)
{
    (void) q; (void) make; (void) ctx;
}

#else

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#define LSTMC_MAX_WORKERS 256
/* How long an idle worker watches for the next call before it sleeps, and how
 * long a caller watches for its helpers to finish before it sleeps. */
#define LSTMC_WORKER_SPIN_NS 100000L
#define LSTMC_CALLER_SPIN_NS 200000L

typedef struct lstmc_job {
    lstmc_task_fn fn;
    void *ctx;
    ptrdiff_t ntasks;
    ptrdiff_t next;          /* the next task to claim (atomic) */
    int active;              /* helpers that took the job and have not finished */
} lstmc_job;

typedef struct lstmc_worker {
    pthread_t thread;
    pthread_cond_t wake;
    lstmc_job *job;          /* set by a caller; NULL while idle */
    int started;             /* took `job` (it can no longer be revoked) */
} lstmc_worker;

static pthread_mutex_t lstmc_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lstmc_slot_free = PTHREAD_COND_INITIALIZER;
static pthread_cond_t lstmc_job_done = PTHREAD_COND_INITIALIZER;
static lstmc_worker *lstmc_workers[LSTMC_MAX_WORKERS];
static int lstmc_nworkers = 0;
static int lstmc_limit = 1;          /* threads lstmc may run at once */
static int lstmc_busy = 0;           /* slots taken: callers and helpers (atomic) */
static int lstmc_waiting = 0;        /* callers waiting for a slot (atomic) */
static int lstmc_calls = 0;          /* pinned calls between begin and end */
static int lstmc_atfork_set = 0;

/* SciPy's OpenBLAS thread count, pinned to 1 while calls run. */
static void (*lstmc_blas_set)(int) = NULL;
static int (*lstmc_blas_get)(void) = NULL;
static int lstmc_blas_saved = 0;     /* the count to restore; 0: nothing to restore */

static void lstmc_run_tasks(lstmc_job *job)
{
    for (;;) {
        ptrdiff_t i = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (i >= job->ntasks) return;
        job->fn(job->ctx, i);
    }
}

/* Spins until *flag is non-zero or `ns` nanoseconds have passed; returns the
 * flag's last value. Pauses between reads and yields the core now and then, so a
 * thread sharing it runs. */
static long lstmc_spin(const void *const *flag, const int *count, long ns)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (flag != NULL ? __atomic_load_n(flag, __ATOMIC_ACQUIRE) != NULL
                             : __atomic_load_n(count, __ATOMIC_ACQUIRE) == 0)
                return 1;
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) > ns) return 0;
        sched_yield();
    }
}

static void *lstmc_worker_main(void *arg)
{
    lstmc_worker *w = (lstmc_worker *) arg;
    pthread_mutex_lock(&lstmc_mu);
    for (;;) {
        if (w->job == NULL) {
            /* Calls often come back to back: watch for the next one for a moment
             * before sleeping (waking a sleeping thread costs tens of µs). */
            pthread_mutex_unlock(&lstmc_mu);
            lstmc_spin((const void *const *) &w->job, NULL, LSTMC_WORKER_SPIN_NS);
            pthread_mutex_lock(&lstmc_mu);
            while (w->job == NULL) pthread_cond_wait(&w->wake, &lstmc_mu);
        }
        lstmc_job *job = w->job;
        w->started = 1;
        pthread_mutex_unlock(&lstmc_mu);
        lstmc_run_tasks(job);
        pthread_mutex_lock(&lstmc_mu);
        __atomic_store_n(&w->job, NULL, __ATOMIC_RELEASE);
        w->started = 0;
        if (__atomic_sub_fetch(&job->active, 1, __ATOMIC_ACQ_REL) == 0)
            pthread_cond_broadcast(&lstmc_job_done);
    }
    return NULL;
}

static void lstmc_after_fork_child(void)
{
    /* One thread survives a fork: the workers and other threads' calls are gone.
     * The old workers' memory is left as it is (a few hundred bytes). */
    pthread_mutex_init(&lstmc_mu, NULL);
    pthread_cond_init(&lstmc_slot_free, NULL);
    pthread_cond_init(&lstmc_job_done, NULL);
    lstmc_nworkers = 0;
    lstmc_busy = 0;
    lstmc_waiting = 0;
    lstmc_calls = 0;
    /* A count pinned by a call of another thread is restored by
     * lstmc_blas_after_fork (lstmc_blas_saved is kept for that). */
}

static void lstmc_before_fork(void) { pthread_mutex_lock(&lstmc_mu); }
static void lstmc_after_fork_parent(void) { pthread_mutex_unlock(&lstmc_mu); }

/* Once, before any call: the fork handlers (a child must not inherit the
 * parent's slots, running calls or a locked mutex, workers or not). Without
 * them no worker is made: calls run on their callers' threads. */
static void lstmc_pool_init(void)
{
    if (!lstmc_atfork_set
            && pthread_atfork(lstmc_before_fork, lstmc_after_fork_parent,
                              lstmc_after_fork_child) == 0)
        lstmc_atfork_set = 1;
}

/* An idle worker, made if needed; NULL when none can be made. Under lstmc_mu. */
static lstmc_worker *lstmc_idle_worker(void)
{
    for (int i = 0; i < lstmc_nworkers; i++)
        if (lstmc_workers[i]->job == NULL) return lstmc_workers[i];
    if (lstmc_nworkers >= LSTMC_MAX_WORKERS || !lstmc_atfork_set) return NULL;
    lstmc_worker *w = (lstmc_worker *) calloc(1, sizeof(lstmc_worker));
    if (w == NULL) return NULL;
    pthread_cond_init(&w->wake, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int failed = pthread_create(&w->thread, &attr, lstmc_worker_main, w);
    pthread_attr_destroy(&attr);
    if (failed) {
        pthread_cond_destroy(&w->wake);
        free(w);
        return NULL;
    }
    lstmc_workers[lstmc_nworkers++] = w;
    return w;
}

/* Takes a slot when one is free, without the lock (the common case). */
static int lstmc_try_slot(void)
{
    int busy = __atomic_load_n(&lstmc_busy, __ATOMIC_SEQ_CST);
    while (busy < __atomic_load_n(&lstmc_limit, __ATOMIC_SEQ_CST)) {
        if (__atomic_compare_exchange_n(&lstmc_busy, &busy, busy + 1, 0,
                                        __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return 1;
    }
    return 0;
}

/* Gives back n slots and wakes as many waiting callers (not all of them: the
 * others would only wake to find no slot, runnable meanwhile). A woken caller
 * that finds its slot taken by a newcomer sleeps again; the newcomer wakes one
 * when it gives it back. */
static void lstmc_free_slots(int n)
{
    __atomic_fetch_sub(&lstmc_busy, n, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&lstmc_waiting, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&lstmc_mu);
        for (int i = 0; i < n; i++) pthread_cond_signal(&lstmc_slot_free);
        pthread_mutex_unlock(&lstmc_mu);
    }
}

/* Waits for a slot for the calling thread. With pin (a call large enough for
 * BLAS to use threads), holds SciPy's BLAS at one thread until the last pinned
 * call ends. */
static void lstmc_call_begin(int pin)
{
    if (!lstmc_try_slot()) {
        pthread_mutex_lock(&lstmc_mu);
        __atomic_fetch_add(&lstmc_waiting, 1, __ATOMIC_SEQ_CST);
        while (!lstmc_try_slot()) pthread_cond_wait(&lstmc_slot_free, &lstmc_mu);
        __atomic_fetch_sub(&lstmc_waiting, 1, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&lstmc_mu);
    }
    if (pin && lstmc_blas_get != NULL) {
        pthread_mutex_lock(&lstmc_mu);
        if (lstmc_calls++ == 0) {
            int now = lstmc_blas_get();
            if (now != 1) {
                lstmc_blas_set(1);
                lstmc_blas_saved = now;
            }
        }
        pthread_mutex_unlock(&lstmc_mu);
    }
}

/* Frees the slot; the last pinned call to end restores SciPy's BLAS count. */
static void lstmc_call_end(int pin)
{
    if (pin && lstmc_blas_get != NULL) {
        pthread_mutex_lock(&lstmc_mu);
        if (--lstmc_calls == 0 && lstmc_blas_saved > 0) {
            lstmc_blas_set(lstmc_blas_saved);
            lstmc_blas_saved = 0;
        }
        pthread_mutex_unlock(&lstmc_mu);
    }
    lstmc_free_slots(1);
}

/*
 * fn(ctx, i) for every i in [0, ntasks), each once, on the calling thread and on
 * up to threads - 1 workers while slots are free. Returns when all are done.
 * Called between lstmc_call_begin and lstmc_call_end.
 */
static void lstmc_parallel(int threads, ptrdiff_t ntasks, lstmc_task_fn fn, void *ctx)
{
    lstmc_job job;
    lstmc_worker *helpers[LSTMC_MAX_WORKERS];
    int n = 0, want = threads - 1;
    if (want > ntasks - 1) want = (int) (ntasks - 1);
    if (want <= 0) {                     /* the tasks in order, no atomics */
        for (ptrdiff_t i = 0; i < ntasks; i++) fn(ctx, i);
        return;
    }
    job.fn = fn;
    job.ctx = ctx;
    job.ntasks = ntasks;
    job.next = 0;
    job.active = 0;
    pthread_mutex_lock(&lstmc_mu);
    /* No helper while a caller waits for a slot: its call comes first (a
     * region's helpers would otherwise take back, region after region, the
     * slots the waiting caller was woken for). */
    while (n < want && __atomic_load_n(&lstmc_waiting, __ATOMIC_SEQ_CST) == 0
           && lstmc_try_slot()) {
        lstmc_worker *w = lstmc_idle_worker();
        if (w == NULL) {
            __atomic_fetch_sub(&lstmc_busy, 1, __ATOMIC_SEQ_CST);
            break;
        }
        __atomic_store_n(&w->job, &job, __ATOMIC_RELEASE);
        helpers[n++] = w;
        __atomic_add_fetch(&job.active, 1, __ATOMIC_ACQ_REL);
        pthread_cond_signal(&w->wake);
    }
    pthread_mutex_unlock(&lstmc_mu);
    lstmc_run_tasks(&job);
    if (n == 0) return;
    pthread_mutex_lock(&lstmc_mu);
    /* Every task has been claimed: helpers that have not woken yet are not
     * waited for, only those running a task. */
    for (int i = 0; i < n; i++) {
        if (helpers[i]->job == &job && !helpers[i]->started) {
            __atomic_store_n(&helpers[i]->job, NULL, __ATOMIC_RELEASE);
            __atomic_sub_fetch(&job.active, 1, __ATOMIC_ACQ_REL);
        }
    }
    if (__atomic_load_n(&job.active, __ATOMIC_ACQUIRE) > 0) {
        /* Helpers finish their last task about when the caller does: watch for a
         * moment before sleeping. */
        pthread_mutex_unlock(&lstmc_mu);
        lstmc_spin(NULL, &job.active, LSTMC_CALLER_SPIN_NS);
        pthread_mutex_lock(&lstmc_mu);
    }
    while (__atomic_load_n(&job.active, __ATOMIC_ACQUIRE) > 0)
        pthread_cond_wait(&lstmc_job_done, &lstmc_mu);
    pthread_mutex_unlock(&lstmc_mu);
    lstmc_free_slots(n);
}

/* Steps of a time loop, each split into per_step tasks: fn(ctx, s, k) for every
 * s in [0, steps) and k in [0, per_step), each once; every task of step s runs
 * after every task of step s - 1 has returned (its writes visible). Member m of
 * the job claims task m of each step first (so a slice of the weights stays in
 * one core's cache), then any other task of the step still unclaimed (so a
 * member that has not joined, or has fallen behind, costs no wait). */
typedef struct lstmc_steps_job {
    lstmc_step_fn fn;
    void *ctx;
    ptrdiff_t steps, per_step;
    ptrdiff_t done;                          /* tasks finished (atomic) */
    ptrdiff_t claimed[LSTMC_MAX_WORKERS];    /* the last step task k was claimed for */
} lstmc_steps_job;

/* Waiting for *count >= target, which threads running now will reach: one
 * round of up to 256 pauses (returns 1 as soon as it is reached), and past
 * 0.2 ms of waiting (since *t0, set at the first round) a yield of the core,
 * so a thread sharing it runs. */
static int lstmc_wait_round(const ptrdiff_t *count, ptrdiff_t target, struct timespec *t0,
                            int *timed)
{
    struct timespec t;
    for (int i = 0; i < 256; i++) {
        if (__atomic_load_n(count, __ATOMIC_ACQUIRE) >= target) return 1;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    if (!*timed) {
        clock_gettime(CLOCK_MONOTONIC, t0);
        *timed = 1;
        return 0;
    }
    clock_gettime(CLOCK_MONOTONIC, &t);
    if ((t.tv_sec - t0->tv_sec) * 1000000000L + (t.tv_nsec - t0->tv_nsec) > LSTMC_CALLER_SPIN_NS)
        sched_yield();
    return 0;
}

/* Waits until *count >= target (see lstmc_wait_round). */
static void lstmc_wait_count(const ptrdiff_t *count, ptrdiff_t target)
{
    struct timespec t0;
    int timed = 0;
    while (!lstmc_wait_round(count, target, &t0, &timed)) {}
}

static void lstmc_steps_member(void *ctx, ptrdiff_t member)
{
    lstmc_steps_job *job = (lstmc_steps_job *) ctx;
    ptrdiff_t K = job->per_step;
    /* A member that joins late starts at the step running now. */
    for (ptrdiff_t s = __atomic_load_n(&job->done, __ATOMIC_ACQUIRE) / K; s < job->steps; s++) {
        lstmc_wait_count(&job->done, s * K);
        for (ptrdiff_t j = 0; j < K; j++) {
            ptrdiff_t k = (member + j) % K, before = s - 1;
            if (__atomic_load_n(&job->claimed[k], __ATOMIC_RELAXED) == before
                    && __atomic_compare_exchange_n(&job->claimed[k], &before, s, 0,
                                                   __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
                job->fn(job->ctx, s, k);
                __atomic_fetch_add(&job->done, 1, __ATOMIC_RELEASE);
            }
        }
    }
}

static void lstmc_parallel_steps(int threads, ptrdiff_t steps, ptrdiff_t per_step,
                                 lstmc_step_fn fn, void *ctx)
{
    lstmc_steps_job job;
    int members = threads < per_step ? threads : (int) per_step;
    if (members <= 1 || per_step > LSTMC_MAX_WORKERS) {
        for (ptrdiff_t s = 0; s < steps; s++)
            for (ptrdiff_t k = 0; k < per_step; k++) fn(ctx, s, k);
        return;
    }
    job.fn = fn;
    job.ctx = ctx;
    job.steps = steps;
    job.per_step = per_step;
    job.done = 0;
    for (ptrdiff_t k = 0; k < per_step; k++) job.claimed[k] = -1;
    lstmc_parallel(members, members, lstmc_steps_member, &job);
}

/*
 * A loop that uses pieces 0, 1, ... in order (the inputs' projection of a run of
 * steps, say) while other members of the same job make them ahead of it: the
 * helpers (lstmc_ahead_help) claim the next piece and make it until none is
 * left, never waiting; the loop, before it uses piece k (lstmc_ahead_ready),
 * makes it itself when nobody has claimed it (a helper has not joined, or fell
 * behind), and while a helper is still making it, makes the next unclaimed
 * piece meanwhile (when making the pieces takes longer than the loop, both
 * threads make them). Nobody waits for a piece that no running thread makes:
 * a helper that never joins costs nothing, and alone the loop makes them all.
 * Which thread makes a piece does not change it.
 */
static int lstmc_ahead_take(lstmc_ahead *q, ptrdiff_t *k)
{
    *k = __atomic_load_n(&q->claimed, __ATOMIC_RELAXED);
    return *k < q->pieces && __atomic_compare_exchange_n(&q->claimed, k, *k + 1, 0,
                                                         __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

static void lstmc_ahead_make(lstmc_ahead *q, ptrdiff_t k, lstmc_task_fn make, void *ctx)
{
    make(ctx, k);
    __atomic_store_n(&q->made[k], 1, __ATOMIC_RELEASE);
}

static void lstmc_ahead_help(lstmc_ahead *q, lstmc_task_fn make, void *ctx)
{
    ptrdiff_t k;
    while (__atomic_load_n(&q->claimed, __ATOMIC_RELAXED) < q->pieces)
        if (lstmc_ahead_take(q, &k)) lstmc_ahead_make(q, k, make, ctx);
}

static void lstmc_ahead_ready(lstmc_ahead *q, ptrdiff_t k, lstmc_task_fn make, void *ctx)
{
    struct timespec t0;
    int timed = 0;
    ptrdiff_t j;
    while (!__atomic_load_n(&q->made[k], __ATOMIC_ACQUIRE)) {
        if (lstmc_ahead_take(q, &j))       /* piece k itself, or a later one meanwhile */
            lstmc_ahead_make(q, j, make, ctx);
        else
            lstmc_wait_round(&q->made[k], 1, &t0, &timed);
    }
}

static void lstmc_set_threads(int n)
{
    pthread_mutex_lock(&lstmc_mu);
    __atomic_store_n(&lstmc_limit, n < 1 ? 1 : n, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&lstmc_slot_free);
    pthread_mutex_unlock(&lstmc_mu);
}

static int lstmc_get_threads(void) { return __atomic_load_n(&lstmc_limit, __ATOMIC_SEQ_CST); }

static int lstmc_pool_workers(void)
{
    pthread_mutex_lock(&lstmc_mu);
    int n = lstmc_nworkers;
    pthread_mutex_unlock(&lstmc_mu);
    return n;
}

/* Finds the thread-count functions of the OpenBLAS that holds `sym` (SciPy's
 * sgemm). Returns 1 when found. */
static int lstmc_bind_blas(const void *sym)
{
    static const char *const setters[] = {
        "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
        "openblas_set_num_threads", "openblas_set_num_threads64_"};
    static const char *const getters[] = {
        "scipy_openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
        "openblas_get_num_threads", "openblas_get_num_threads64_"};
    Dl_info info;
    if (sym == NULL || dladdr(sym, &info) == 0 || info.dli_fname == NULL) return 0;
    void *lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (lib == NULL) return 0;
    for (size_t i = 0; i < sizeof setters / sizeof setters[0]; i++) {
        void *set = dlsym(lib, setters[i]), *get = dlsym(lib, getters[i]);
        if (set != NULL && get != NULL) {
            pthread_mutex_lock(&lstmc_mu);
            *(void **) &lstmc_blas_set = set;
            *(void **) &lstmc_blas_get = get;
            pthread_mutex_unlock(&lstmc_mu);
            return 1;   /* the library stays loaded: SciPy holds it */
        }
    }
    dlclose(lib);
    return 0;
}

/* Sets SciPy's BLAS thread count (the benchmark's floor at one thread); returns
 * the count before, or -1 when it cannot be set. While pinned calls run, the
 * count they restore when the last ends is the one set. */
static int lstmc_blas_set_threads(int n)
{
    if (lstmc_blas_get == NULL) return -1;
    pthread_mutex_lock(&lstmc_mu);
    int before;
    if (lstmc_calls > 0) {
        before = lstmc_blas_saved > 0 ? lstmc_blas_saved : lstmc_blas_get();
        lstmc_blas_saved = n != 1 ? n : 0;    /* the live count stays 1 meanwhile */
    } else {
        before = lstmc_blas_get();
        lstmc_blas_set(n);
    }
    pthread_mutex_unlock(&lstmc_mu);
    return before;
}

/* In a forked child, from Python's after-fork hook (OpenBLAS's own fork
 * handlers have run): a count pinned by a call of another thread of the parent,
 * which will never end here, is restored. */
static void lstmc_blas_after_fork(void)
{
    if (lstmc_blas_get != NULL && lstmc_calls == 0 && lstmc_blas_saved > 0) {
        lstmc_blas_set(lstmc_blas_saved);
        lstmc_blas_saved = 0;
    }
}

/* SciPy's BLAS thread count now (-1: unknown). */
static int lstmc_blas_threads_now(void)
{
    return lstmc_blas_get != NULL ? lstmc_blas_get() : -1;
}

#endif
#endif
