#ifndef C_SWITCHYARD_LINUX_H
#define C_SWITCHYARD_LINUX_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>

/// One readiness event, unpacked from the kernel's (packed on x86_64) epoll_event.
typedef struct {
    int32_t fd;
    uint32_t events;
} sy_event;

/* Interest and event bits, the same values for every poller backend. */
#define SY_EV_READ   0x001u
#define SY_EV_WRITE  0x004u
#define SY_EV_ERROR  0x008u
#define SY_EV_HUP    0x010u
#define SY_EV_RDHUP  0x2000u

/* epoll_ctl operations (the values of EPOLL_CTL_ADD, _DEL, _MOD; checked in shim.c). */
#define SY_EPOLL_CTL_ADD 1
#define SY_EPOLL_CTL_DEL 2
#define SY_EPOLL_CTL_MOD 3

int sy_epoll_create(void);
/// op: SY_EPOLL_CTL_ADD, _DEL or _MOD. interest: SY_EV_READ | SY_EV_WRITE (| SY_EV_RDHUP).
int sy_epoll_ctl(int epfd, int op, int fd, uint32_t interest);
/// Waits and unpacks at most `max` events into `out`. Returns the count or -1 (errno set).
int sy_epoll_wait(int epfd, sy_event *out, int max, int timeout_ms);

int sy_eventfd(void);
int sy_eventfd_write(int fd, uint64_t value);
int sy_eventfd_drain(int fd);

int sy_accept4(int listen_fd, struct sockaddr *addr, socklen_t *len);
int sy_socket_nonblocking(int domain, int type);

/* fd_set helpers (the macros are not importable). */
int sy_fd_setsize(void);
size_t sy_fd_set_size(void);
void sy_fd_zero(void *set);
void sy_fd_set(int fd, void *set);
int sy_fd_isset(int fd, const void *set);
int sy_select(int nfds, void *readfds, void *writefds, void *exceptfds, int timeout_ms);

/* SIGINT/SIGTERM to eventfds. The handler (async-signal-safe) writes to every registered descriptor. */
/// Most descriptors registered at once.
#define SY_TERMINATION_SLOTS 32
/// Registers `fd` (an eventfd); the first registration installs the handlers. 0, or -1 with errno (ENOSPC: the
/// table is full; EEXIST: already registered; or the sigaction error). Safe from any thread.
int sy_termination_signals_add(int fd);
/// Removes `fd`; the last removal restores the default handlers. When it returns, no handler writes to `fd` any
/// more, so it may be closed. 0, or -1 with errno (ENOENT: not registered). Safe from any thread.
int sy_termination_signals_remove(int fd);
/// Descriptors registered now.
int sy_termination_signals_count(void);
/// The signal number that last fired the handler (0 if none).
int sy_last_termination_signal(void);
void sy_ignore_sigpipe(void);

/* The event loop owned by the calling thread (one per thread). */
void *sy_current_loop(void);
void sy_set_current_loop(void *loop);

/* read, write and writev through syscall(2): the same calls without glibc's cancellation-point bookkeeping
   (two extra calls around every read and write). The reactor's descriptors are non-blocking, so no thread is
   ever cancelled inside them. -1 and errno on failure, as the glibc wrappers. */
ssize_t sy_read(int fd, void *buf, size_t count);
ssize_t sy_write(int fd, const void *buf, size_t count);
ssize_t sy_writev(int fd, const struct iovec *iov, int iovcnt);

/* Zero-copy relay between two sockets (the tunnel's splice path): a pipe per direction, bytes moved
   socket -> pipe -> socket by splice(2) with SPLICE_F_MOVE | SPLICE_F_NONBLOCK, never through user memory.
   -1 and errno on failure. */
/// A non-blocking, close-on-exec pipe: fds[0] reads, fds[1] writes.
int sy_pipe_nonblocking(int fds[2]);
/// Sets the pipe's capacity (F_SETPIPE_SZ); the capacity granted, or -1.
int sy_set_pipe_size(int fd, int bytes);
/// splice(2) of up to `count` bytes from `from` to `to` (one of them a pipe), never blocking.
ssize_t sy_splice(int from, int to, size_t count);

/* Several datagrams in one system call (sendmmsg(2)): datagram i is `payloads[i]`, sent to `addresses[i]`. A
   datagram the kernel refuses (a full socket buffer, an unreachable port) is skipped and the rest still go; EINTR
   is retried. Returns how many the kernel took; `refused` (NULL, or `count` zeroed bytes) gets a 1 for each
   datagram refused. */
unsigned sy_send_datagrams(int fd, const struct sockaddr_in *addresses, const struct iovec *payloads,
                           unsigned count, unsigned char *refused);

/* Bytes written once and sent to many sockets (the media relay's shared chunks): an append-only file in memory,
   sent with sendfile(2), so the kernel takes references to its pages instead of copying them per socket.
   -1 and errno on failure. */
/// memfd_create(name, MFD_CLOEXEC): an anonymous file in memory.
int sy_memfd(const char *name);
/// pwrite(2) of all `count` bytes at `offset` (retried on EINTR and short writes); 0, or -1 and errno.
int sy_pwrite_all(int fd, const void *buf, size_t count, int64_t offset);
/// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): gives the pages of the range back (reads see zeros).
int sy_punch_hole(int fd, int64_t offset, int64_t length);
/// sendfile(2) of up to `count` bytes of `in` from `*offset` (advanced by what was sent) to the socket `out`.
ssize_t sy_sendfile(int out, int in, int64_t *offset, size_t count);
/// sendmsg(2) of the pieces with MSG_MORE | MSG_NOSIGNAL: the kernel holds them for what is sent next (a sendfile
/// of the bytes they frame), so both leave in the same segments.
ssize_t sy_sendv_more(int fd, const struct iovec *iov, int iovcnt);

pid_t sy_gettid(void);
/// The calling thread's CPU affinity mask into `mask` (`size` bytes, zeroed first); bytes the kernel wrote, or -1.
long sy_sched_getaffinity(void *mask, size_t size);
uint64_t sy_monotonic_ns(void);
/// CPU time (user + system) of the calling thread, in nanoseconds.
uint64_t sy_thread_cpu_ns(void);

#include <pthread.h>
void sy_set_thread_name(pthread_t thread, const char *name);

/// Returns the allocator's free memory to the system (glibc `malloc_trim(0)`: every arena, free pages in the
/// middle of a heap too). 1 when some memory was released.
int sy_malloc_trim(void);

#endif
