#define _GNU_SOURCE
#include "CSwitchyardLinux.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
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

static volatile sig_atomic_t termination_fd = -1;
static volatile sig_atomic_t last_termination_signal = 0;

static void on_termination_signal(int signo) {
    int saved = errno;
    last_termination_signal = signo;
    int fd = termination_fd;
    if (fd >= 0) {
        uint64_t one = 1;
        ssize_t r = write(fd, &one, sizeof one);
        (void)r;
    }
    errno = saved;
}

int sy_install_termination_signals(int fd) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    termination_fd = fd;
    sa.sa_handler = fd >= 0 ? on_termination_signal : SIG_DFL;
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &sa, NULL) != 0) return -1;
    if (sigaction(SIGTERM, &sa, NULL) != 0) return -1;
    /* A parent (a thread pool's worker, say) may have spawned us with these blocked: unblock them here. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    return 0;
}

int sy_last_termination_signal(void) { return last_termination_signal; }

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
