#define _GNU_SOURCE
#include "CSwitchyardLinux.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>

_Static_assert(SY_EV_READ == EPOLLIN, "read bit");
_Static_assert(SY_EV_WRITE == EPOLLOUT, "write bit");
_Static_assert(SY_EV_ERROR == EPOLLERR, "error bit");
_Static_assert(SY_EV_HUP == EPOLLHUP, "hup bit");
_Static_assert(SY_EV_RDHUP == EPOLLRDHUP, "rdhup bit");
_Static_assert(SY_EV_RDHUP == POLLRDHUP, "poll rdhup bit");
_Static_assert(SY_EPOLL_CTL_ADD == EPOLL_CTL_ADD, "epoll_ctl add");
_Static_assert(SY_EPOLL_CTL_DEL == EPOLL_CTL_DEL, "epoll_ctl delete");
_Static_assert(SY_EPOLL_CTL_MOD == EPOLL_CTL_MOD, "epoll_ctl modify");

int sy_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int sy_epoll_ctl(int epfd, int op, int fd, uint32_t interest) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = interest;
    ev.data.fd = fd;
    return epoll_ctl(epfd, op, fd, &ev);
}

int sy_epoll_wait(int epfd, sy_event *out, int max, int timeout_ms) {
    struct epoll_event evs[512];
    if (max > 512) max = 512;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        out[i].fd = evs[i].data.fd;
        out[i].events = evs[i].events;
    }
    return n;
}

int sy_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int sy_eventfd_write(int fd, uint64_t value) {
    ssize_t n;
    do { n = write(fd, &value, sizeof value); } while (n < 0 && errno == EINTR);
    return n == sizeof value ? 0 : -1;
}

int sy_eventfd_drain(int fd) {
    uint64_t value;
    ssize_t n;
    do { n = read(fd, &value, sizeof value); } while (n < 0 && errno == EINTR);
    return n == sizeof value ? 0 : -1;
}

int sy_accept4(int listen_fd, struct sockaddr *addr, socklen_t *len) {
    return accept4(listen_fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int sy_socket_nonblocking(int domain, int type) {
    return socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
}

int sy_fd_setsize(void) { return FD_SETSIZE; }
size_t sy_fd_set_size(void) { return sizeof(fd_set); }
void sy_fd_zero(void *set) { FD_ZERO((fd_set *)set); }
void sy_fd_set(int fd, void *set) {
    if (fd >= 0 && fd < FD_SETSIZE) FD_SET(fd, (fd_set *)set);
}
int sy_fd_isset(int fd, const void *set) {
    if (fd < 0 || fd >= FD_SETSIZE) return 0;
    return FD_ISSET(fd, (const fd_set *)set) ? 1 : 0;
}
int sy_select(int nfds, void *readfds, void *writefds, void *exceptfds, int timeout_ms) {
    struct timeval tv, *tvp = NULL;
    if (timeout_ms >= 0) {
        tv.tv_sec = timeout_ms / 1000;
        tv.tv_usec = (timeout_ms % 1000) * 1000;
        tvp = &tv;
    }
    return select(nfds, (fd_set *)readfds, (fd_set *)writefds, (fd_set *)exceptfds, tvp);
}

/* Termination signals. Every registered descriptor gets a write from the handler. Each slot is one lock-free atomic
   int, so the handler (which takes no lock: it may interrupt the thread holding it) never sees a torn entry; adding
   and removing take `termination_lock` against each other. `handlers_running` counts handler invocations in
   progress: a removal waits for it to reach zero, so once it returns no handler can still write to the removed
   descriptor, and its owner may close it without a late write landing on a descriptor that reused the number. */
static _Atomic int termination_fds[SY_TERMINATION_SLOTS] = {[0 ... SY_TERMINATION_SLOTS - 1] = -1};
static _Atomic int handlers_running = 0;
static pthread_mutex_t termination_lock = PTHREAD_MUTEX_INITIALIZER;
static int termination_count = 0; /* registered descriptors; guarded by termination_lock */
/* Written by the handler (on whatever thread the signal lands) and read by the loops: an atomic, not a volatile
   sig_atomic_t (that is only safe within one thread; TSan reports it as a race). */
static _Atomic int last_termination_signal = 0;

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "the handler needs lock-free atomics");

static void on_termination_signal(int signo) {
    int saved = errno;
    atomic_fetch_add_explicit(&handlers_running, 1, memory_order_seq_cst);
    atomic_store_explicit(&last_termination_signal, signo, memory_order_seq_cst);
    for (int i = 0; i < SY_TERMINATION_SLOTS; i++) {
        int fd = atomic_load_explicit(&termination_fds[i], memory_order_seq_cst);
        if (fd >= 0) {
            uint64_t one = 1;
            ssize_t r = write(fd, &one, sizeof one);
            (void)r;
        }
    }
    atomic_fetch_sub_explicit(&handlers_running, 1, memory_order_seq_cst);
    errno = saved;
}

/* Sets SIGINT and SIGTERM to the handler or to the default. Called with termination_lock held. */
static int set_termination_handlers(int install) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = install ? on_termination_signal : SIG_DFL;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &sa, NULL) != 0) return -1;
    if (sigaction(SIGTERM, &sa, NULL) != 0) return -1;
    if (install) {
        /* A parent (a thread pool's worker, say) may have spawned us with these blocked: unblock them here. */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    }
    return 0;
}

int sy_termination_signals_add(int fd) {
    if (fd < 0) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&termination_lock);
    int slot = -1;
    for (int i = 0; i < SY_TERMINATION_SLOTS; i++) {
        int current = atomic_load_explicit(&termination_fds[i], memory_order_relaxed);
        if (current == fd) {
            pthread_mutex_unlock(&termination_lock);
            errno = EEXIST;
            return -1;
        }
        if (current < 0 && slot < 0) slot = i;
    }
    if (slot < 0) {
        pthread_mutex_unlock(&termination_lock);
        errno = ENOSPC;
        return -1;
    }
    /* The handlers first: the slot is filled only once they are in place, so a failure leaves nothing behind. */
    if (termination_count == 0 && set_termination_handlers(1) != 0) {
        int saved = errno;
        pthread_mutex_unlock(&termination_lock);
        errno = saved;
        return -1;
    }
    atomic_store_explicit(&termination_fds[slot], fd, memory_order_seq_cst);
    termination_count++;
    pthread_mutex_unlock(&termination_lock);
    return 0;
}

int sy_termination_signals_remove(int fd) {
    pthread_mutex_lock(&termination_lock);
    int found = 0;
    for (int i = 0; i < SY_TERMINATION_SLOTS && fd >= 0; i++) {
        if (atomic_load_explicit(&termination_fds[i], memory_order_relaxed) == fd) {
            atomic_store_explicit(&termination_fds[i], -1, memory_order_seq_cst);
            found = 1;
            break;
        }
    }
    if (!found) {
        pthread_mutex_unlock(&termination_lock);
        errno = ENOENT;
        return -1;
    }
    termination_count--;
    int result = termination_count == 0 ? set_termination_handlers(0) : 0;
    int saved = errno;
    pthread_mutex_unlock(&termination_lock);
    /* A handler that loaded the descriptor before the store above may still be writing to it: wait it out (a
       handler is a few system calls long). */
    while (atomic_load_explicit(&handlers_running, memory_order_seq_cst) != 0) sched_yield();
    errno = saved;
    return result;
}

int sy_termination_signals_count(void) {
    pthread_mutex_lock(&termination_lock);
    int n = termination_count;
    pthread_mutex_unlock(&termination_lock);
    return n;
}

int sy_last_termination_signal(void) {
    return atomic_load_explicit(&last_termination_signal, memory_order_seq_cst);
}

void sy_ignore_sigpipe(void) { signal(SIGPIPE, SIG_IGN); }

static __thread void *current_loop __attribute__((tls_model("initial-exec"))) = NULL;
void *sy_current_loop(void) { return current_loop; }
void sy_set_current_loop(void *loop) { current_loop = loop; }

pid_t sy_gettid(void) { return (pid_t)syscall(SYS_gettid); }
long sy_sched_getaffinity(void *mask, size_t size) {
    memset(mask, 0, size);
    return syscall(SYS_sched_getaffinity, 0, size, mask);
}

uint64_t sy_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t sy_thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#include <pthread.h>
void sy_set_thread_name(pthread_t thread, const char *name) { pthread_setname_np(thread, name); }

ssize_t sy_read(int fd, void *buf, size_t count) { return syscall(SYS_read, fd, buf, count); }

ssize_t sy_write(int fd, const void *buf, size_t count) { return syscall(SYS_write, fd, buf, count); }

ssize_t sy_writev(int fd, const struct iovec *iov, int iovcnt) { return syscall(SYS_writev, fd, iov, iovcnt); }

int sy_pipe_nonblocking(int fds[2]) { return pipe2(fds, O_NONBLOCK | O_CLOEXEC); }

int sy_set_pipe_size(int fd, int bytes) { return fcntl(fd, F_SETPIPE_SZ, bytes); }

ssize_t sy_splice(int from, int to, size_t count) {
    return splice(from, NULL, to, NULL, count, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
}

unsigned sy_send_datagrams(int fd, const struct sockaddr_in *addresses, const struct iovec *payloads,
                           unsigned count, unsigned char *refused) {
    enum { chunk = 64 };
    struct mmsghdr messages[chunk];
    unsigned taken = 0, next = 0;
    while (next < count) {
        unsigned n = count - next < chunk ? count - next : chunk;
        memset(messages, 0, sizeof(struct mmsghdr) * n);
        for (unsigned i = 0; i < n; i++) {
            messages[i].msg_hdr.msg_name = (void *)&addresses[next + i];
            messages[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
            messages[i].msg_hdr.msg_iov = (struct iovec *)&payloads[next + i];
            messages[i].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(fd, messages, n, MSG_NOSIGNAL);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            if (refused) refused[next] = 1;
            next += 1;  /* the first one was refused: it is dropped, the others still go */
            continue;
        }
        taken += (unsigned)r;
        next += (unsigned)r;
    }
    return taken;
}

int sy_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

int sy_pwrite_all(int fd, const void *buf, size_t count, int64_t offset) {
    const char *p = buf;
    while (count > 0) {
        ssize_t n = pwrite(fd, p, count, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        count -= (size_t)n;
        offset += n;
    }
    return 0;
}

int sy_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}

ssize_t sy_sendfile(int out, int in, int64_t *offset, size_t count) {
    off_t off = (off_t)*offset;
    ssize_t n = sendfile(out, in, &off, count);
    *offset = (int64_t)off;
    return n;
}

ssize_t sy_sendv_more(int fd, const struct iovec *iov, int iovcnt) {
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = (struct iovec *)iov;
    message.msg_iovlen = (size_t)iovcnt;
    return sendmsg(fd, &message, MSG_MORE | MSG_NOSIGNAL);
}

int sy_malloc_trim(void) { return malloc_trim(0); }
