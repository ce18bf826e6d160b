/*
 * lstmc's per-layer lock (lstmc._work's _Lock), in C: taking a free lock is one
 * atomic operation. (CPython's PyThread lock reads the clock on every acquire,
 * even one that does not wait: ~20 ns of a 0.6 µs call.)
 *
 * lstmc_lock_try takes the lock if it is free; lstmc_lock_wait waits for it
 * (call it with the GIL released); lstmc_lock_reset makes a lock free again
 * in a forked child whose holder did not survive the fork.
 */
#ifndef LSTMC_LOCK_H
#define LSTMC_LOCK_H

#if defined(_WIN32)
#include <windows.h>
typedef SRWLOCK lstmc_lock;
static void lstmc_lock_init(lstmc_lock *l) { InitializeSRWLock(l); }
static void lstmc_lock_destroy(lstmc_lock *l) { (void) l; }
static int lstmc_lock_try(lstmc_lock *l) { return TryAcquireSRWLockExclusive(l) != 0; }
static void lstmc_lock_wait(lstmc_lock *l) { AcquireSRWLockExclusive(l); }
static void lstmc_lock_release(lstmc_lock *l) { ReleaseSRWLockExclusive(l); }
static void lstmc_lock_reset(lstmc_lock *l) { InitializeSRWLock(l); }
#else
#include <pthread.h>
typedef pthread_mutex_t lstmc_lock;
static void lstmc_lock_init(lstmc_lock *l) { pthread_mutex_init(l, NULL); }
static void lstmc_lock_destroy(lstmc_lock *l) { pthread_mutex_destroy(l); }
static int lstmc_lock_try(lstmc_lock *l) { return pthread_mutex_trylock(l) == 0; }
static void lstmc_lock_wait(lstmc_lock *l) { pthread_mutex_lock(l); }
static void lstmc_lock_release(lstmc_lock *l) { pthread_mutex_unlock(l); }
/* Only the forking thread lives on in a child: a mutex another thread held is
 * initialised afresh (what glibc does with its own locks after fork). */
static void lstmc_lock_reset(lstmc_lock *l) { pthread_mutex_init(l, NULL); }
#endif

#endif
