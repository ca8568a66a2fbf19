// Makes Synchronization.Mutex visible to ThreadSanitizer on Linux (preloaded by scripts/test --sanitize thread).
//
// Mutex's fast paths are inlined into our code (a compare-exchange on its lock word, which TSan instruments: an
// acquire on lock, a release on unlock). Its slow paths (_lockSlow, _unlockSlow, _tryLockSlow) live in
// libswiftSynchronization.so, which is not instrumented: they spin with plain `lock cmpxchg` and then take the lock
// word through the kernel (FUTEX_LOCK_PI / FUTEX_UNLOCK_PI). A contended lock therefore hands over with no
// happens-before edge TSan can see, and every access a contended Mutex guards is reported as a race (false
// positives all over the reactor's task queue, the hubs and the correlators).
//
// These wrappers take the slow paths' symbols (the preloaded library comes first in the lookup order), forward to
// the real ones (dlsym RTLD_NEXT) and tell TSan what happened: acquire on the lock word after a slow lock, release
// before a slow unlock, the same sync object the inlined atomics use. Swift passes `self` (the address of the lock
// word) in the swiftself register: `swift_context` on a swiftcall function is that register.
//
// The TSan entry points are weak: a process without TSan (a shell the tests start) loads this library harmlessly.
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

extern void __tsan_acquire(void *addr) __attribute__((weak));
extern void __tsan_release(void *addr) __attribute__((weak));

#define SWIFTCALL __attribute__((swiftcall))
#define SELF __attribute__((swift_context))

typedef SWIFTCALL void (*LockSlow)(uint32_t selfID, void *SELF handle);
typedef SWIFTCALL void (*UnlockSlow)(void *SELF handle);
typedef SWIFTCALL bool (*TryLockSlow)(void *SELF handle);

// The real function; the cache below it is written racily but benignly (every thread stores the same pointer).
static void *next(const char *name) {
    void *f = dlsym(RTLD_NEXT, name);
    if (f == NULL) abort();
    return f;
}

SWIFTCALL void lockSlow(uint32_t selfID, void *SELF handle) __asm__("$s15Synchronization12_MutexHandleV9_lockSlowyys6UInt32VF");
SWIFTCALL void lockSlow(uint32_t selfID, void *SELF handle) {
    static LockSlow real;
    if (real == NULL) real = (LockSlow)next("$s15Synchronization12_MutexHandleV9_lockSlowyys6UInt32VF");
    real(selfID, handle);
    if (__tsan_acquire) __tsan_acquire(handle);
}

SWIFTCALL void unlockSlow(void *SELF handle) __asm__("$s15Synchronization12_MutexHandleV11_unlockSlowyyF");
SWIFTCALL void unlockSlow(void *SELF handle) {
    static UnlockSlow real;
    if (real == NULL) real = (UnlockSlow)next("$s15Synchronization12_MutexHandleV11_unlockSlowyyF");
    if (__tsan_release) __tsan_release(handle);
    real(handle);
}

SWIFTCALL bool tryLockSlow(void *SELF handle) __asm__("$s15Synchronization12_MutexHandleV12_tryLockSlowSbyF");
SWIFTCALL bool tryLockSlow(void *SELF handle) {
    static TryLockSlow real;
    if (real == NULL) real = (TryLockSlow)next("$s15Synchronization12_MutexHandleV12_tryLockSlowSbyF");
    bool locked = real(handle);
    if (locked && __tsan_acquire) __tsan_acquire(handle);
    return locked;
}
