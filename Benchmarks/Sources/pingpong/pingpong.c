// Ping-pong load client for the benchmark suite (muduo "pingpong" style), epoll, loopback only.
//
//   pingpong --host 127.0.0.1 --port P --connections C --size B --seconds S
//            [--threads T] [--rate R] [--frame-proto] [--msg-id N] [--idle] [--reconnect]
//            [--warmup W]
//
// Closed loop (default): each connection sends one message of B bytes, then sends back whatever
// arrives. Every B bytes that come back on a connection complete one round trip; its time is the
// time since the previous round trip of that connection completed (one message in flight).
//
// Fixed rate (--rate R, messages per second for the whole client): messages are scheduled at
// R/s, spread round-robin over the connections; a connection sends a whole message when it is
// due and idle, and the round-trip time counts from the scheduled time (so queueing behind a
// slow reply is charged to the server, not hidden).
//
// --frame-proto: the message is a Lars frame (Int32 LE id, Int32 LE body length) whose body is
// a protobuf switchyard.bench.EchoMessage { seq = 1, payload = B bytes }, built here by hand.
// The server echoes a frame of the same length, so the frame length still delimits a round trip.
//
// --idle: open C connections, print "connected C" on stdout, hold them for S seconds, exit.
//
// --reconnect (connection rate): each of the C connections sends one message, reads its reply
// whole, closes, and opens the next connection (a non-blocking connect) at once, so C connects
// are in flight at any time. A round trip counts from the start of its connect; connections_per_sec
// is the rate of those whole exchanges (connect, message, reply, close).
//
// --warmup W: the load runs W seconds before the S measured ones (not counted), and "measuring" and
// "measured" go to stderr at the start and the end of the measured window (before the connections
// close), so a caller can sample a server's CPU over exactly that window.
//
// Prints one JSON line: msgs_per_sec, mib_per_sec, p50_us, p99_us, client_cpu_s, connections,
// size, seconds, connections_per_sec (0 without --reconnect), and a few more counters.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

// ---- latency histogram: exact below 128 ns, then 64 buckets per power of two (~1.6 %) ----

#define SUB_BITS 6
#define SUB (1 << SUB_BITS)
#define LINEAR 128
#define NBUCKETS (LINEAR + 58 * SUB)

typedef struct { uint64_t count[NBUCKETS]; uint64_t total; } histo_t;

static int bucket_of(uint64_t v) {
    if (v < LINEAR) return (int)v;
    int e = 63 - __builtin_clzll(v);          // v in [2^e, 2^(e+1)), e >= 7
    int sub = (int)((v >> (e - SUB_BITS)) & (SUB - 1));
    int idx = LINEAR + (e - 7) * SUB + sub;
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static uint64_t bucket_value(int idx) {       // midpoint of the bucket
    if (idx < LINEAR) return (uint64_t)idx;
    int e = (idx - LINEAR) / SUB + 7, sub = (idx - LINEAR) % SUB;
    uint64_t lo = (1ULL << e) + ((uint64_t)sub << (e - SUB_BITS));
    return lo + (1ULL << (e - SUB_BITS)) / 2;
}

static double percentile_us(const histo_t *h, double p) {
    if (h->total == 0) return 0;
    uint64_t rank = (uint64_t)(p * (double)h->total);
    if (rank >= h->total) rank = h->total - 1;
    uint64_t seen = 0;
    for (int i = 0; i < NBUCKETS; i++) {
        seen += h->count[i];
        if (seen > rank) return (double)bucket_value(i) / 1000.0;
    }
    return 0;
}

// ---- options and per-thread state ----

static struct {
    const char *host;
    int port, connections, threads, frame, idle, msg_id, reconnect;
    long size;
    double seconds, rate, warmup;
} opt = {"127.0.0.1", 0, 1, 1, 0, 0, 1000, 0, 16, 5, 0, -1};

static uint64_t window_start, window_end;   // the measured window (ns, CLOCK_MONOTONIC), set in main

static struct sockaddr_in server_addr;   // --host and --port, filled once in main

static char *message;       // the bytes every connection sends (identical for all)
static size_t msglen;

#define OWED_CAP 64

typedef struct {
    int fd;
    size_t to_send, send_off;          // bytes owed to the socket, offset into `message`
    size_t recv_in_msg;                // bytes of the current round trip received so far
    uint64_t msg_start;                // closed loop: start of the current round trip (ns)
    int in_flight, want_out;
    uint64_t owed[OWED_CAP];           // fixed rate: scheduled times of messages not yet sent
    int owed_head, owed_len;
} conn_t;

typedef struct {
    pthread_t tid;
    int first, count;                  // this thread's slice of the connections
    conn_t *conns;
    histo_t hist;
    uint64_t messages, bytes, missed, errors;
    double rate;                       // this thread's share of --rate
} worker_t;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static size_t varint(uint8_t *out, uint64_t v) {
    size_t n = 0;
    while (v >= 0x80) { out[n++] = (uint8_t)(v | 0x80); v >>= 7; }
    out[n++] = (uint8_t)v;
    return n;
}

static void put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static void build_message(void) {
    if (!opt.frame) {
        msglen = (size_t)opt.size;
        message = malloc(msglen);
        for (size_t i = 0; i < msglen; i++) message[i] = (char)('a' + i % 26);
        return;
    }
    // EchoMessage: field 1 (seq, varint) = 1; field 2 (payload, bytes) = size bytes.
    uint8_t *buf = malloc((size_t)opt.size + 32);
    size_t n = 8;
    buf[n++] = 0x08; buf[n++] = 0x01;
    buf[n++] = 0x12; n += varint(buf + n, (uint64_t)opt.size);
    for (long i = 0; i < opt.size; i++) buf[n++] = (uint8_t)('a' + i % 26);
    put_le32(buf, (uint32_t)opt.msg_id);
    put_le32(buf + 4, (uint32_t)(n - 8));
    message = (char *)buf;
    msglen = n;
}

static void resolve_server(void) {
    server_addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    if (inet_pton(AF_INET, opt.host, &server_addr.sin_addr) != 1 || (ntohl(server_addr.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "pingpong: loopback addresses only\n");
        exit(2);
    }
}

static int connect_one(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0) { close(fd); return -1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void set_nonblocking(int fd) {
    int one = 1;
    ioctl(fd, FIONBIO, &one);
}

// Writes what the connection owes; returns -1 on a fatal error.
static int flush_conn(int ep, conn_t *c) {
    while (c->to_send > 0) {
        size_t chunk = msglen - c->send_off;
        if (chunk > c->to_send) chunk = c->to_send;
        ssize_t n = write(c->fd, message + c->send_off, chunk);
        if (n > 0) {
            c->to_send -= (size_t)n;
            c->send_off = (c->send_off + (size_t)n) % msglen;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        return -1;
    }
    int want = c->to_send > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 0;
}

// --reconnect: opens the connection's next socket (non-blocking connect) and sends its message
// as soon as the socket takes it. Returns -1 when no socket could be opened.
static int reopen_conn(int ep, conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->msg_start = now_ns();
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->to_send = msglen;
    c->send_off = 0;
    c->recv_in_msg = 0;
    c->in_flight = 1;
    c->want_out = 1;                   // EPOLLOUT tells when the connect is done and the rest can go
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return flush_conn(ep, c);          // a connect in progress takes nothing yet (EAGAIN)
}

static void start_scheduled(conn_t *c) {       // fixed rate: send the oldest owed message
    c->msg_start = c->owed[c->owed_head];
    c->owed_head = (c->owed_head + 1) % OWED_CAP;
    c->owed_len--;
    c->in_flight = 1;
    c->to_send += msglen;
}

// Reads what arrived; returns -1 on a fatal error, 1 when --reconnect's exchange is complete
// (the caller closes the connection and opens the next).
static int on_read(int ep, worker_t *w, conn_t *c, char *scratch, size_t scratch_len) {
    for (;;) {
        ssize_t n = read(c->fd, scratch, scratch_len);
        if (n == 0) return -1;
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return -1;
        }
        w->bytes += (uint64_t)n;
        c->recv_in_msg += (size_t)n;
        if (opt.reconnect) {
            if (c->recv_in_msg >= msglen) {
                uint64_t rtt = now_ns() - c->msg_start;
                w->messages++;
                w->hist.count[bucket_of(rtt)]++;
                w->hist.total++;
                return 1;
            }
            if ((size_t)n < scratch_len) break;
            continue;
        }
        if (opt.rate <= 0) c->to_send += (size_t)n;   // closed loop: send back what arrived
        while (c->recv_in_msg >= msglen && (opt.rate <= 0 || c->in_flight)) {
            uint64_t t = now_ns();
            c->recv_in_msg -= msglen;
            w->messages++;
            uint64_t rtt = t - c->msg_start;
            w->hist.count[bucket_of(rtt)]++;
            w->hist.total++;
            if (opt.rate > 0) {
                c->in_flight = 0;
                if (c->owed_len > 0) start_scheduled(c);
            } else {
                c->msg_start = t;
            }
        }
        if ((size_t)n < scratch_len) break;
    }
    return flush_conn(ep, c);
}

static void *run_worker(void *arg) {
    worker_t *w = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    size_t scratch_len = 256 * 1024;
    char *scratch = malloc(scratch_len);
    uint64_t t0 = now_ns();
    uint64_t end = window_end;
    int counting = t0 >= window_start;
    for (int i = 0; i < w->count; i++) {
        conn_t *c = &w->conns[i];
        if (opt.reconnect) {
            c->fd = -1;
            if (reopen_conn(ep, c) < 0) w->errors++;
            continue;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        if (opt.rate <= 0) {
            c->msg_start = t0;
            c->to_send = msglen;
            c->in_flight = 1;
            if (flush_conn(ep, c) < 0) w->errors++;
        }
    }
    int tfd = -1;
    uint64_t issued = 0;
    int next_conn = 0;
    if (opt.rate > 0) {
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        uint64_t interval = (uint64_t)(1e9 / w->rate);
        if (interval < 20000) interval = 20000;      // wake at most every 20 us; issue in batches
        struct itimerspec its = {
            .it_interval = {(time_t)(interval / 1000000000ULL), (long)(interval % 1000000000ULL)},
            .it_value = {0, 1000},
        };
        timerfd_settime(tfd, 0, &its, NULL);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    }
    struct epoll_event events[512];
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end) break;
        if (!counting && t >= window_start) {       // --warmup is over: count from here
            counting = 1;
            w->messages = w->bytes = w->missed = 0;
            memset(&w->hist, 0, sizeof w->hist);
        }
        int timeout_ms = (int)(((counting ? end : window_start) - t) / 1000000ULL) + 1;
        if (timeout_ms > 100) timeout_ms = 100;
        int n = epoll_wait(ep, events, 512, timeout_ms);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c == NULL) {                              // fixed-rate tick
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0) { /* spurious */ }
                uint64_t now = now_ns();
                uint64_t due = (uint64_t)((double)(now - t0) * w->rate / 1e9);
                for (; issued < due; issued++) {
                    conn_t *d = &w->conns[next_conn];
                    next_conn = (next_conn + 1) % w->count;
                    uint64_t sched = t0 + (uint64_t)((double)issued * 1e9 / w->rate);
                    if (d->owed_len == OWED_CAP) { w->missed++; continue; }
                    d->owed[(d->owed_head + d->owed_len) % OWED_CAP] = sched;
                    d->owed_len++;
                    if (!d->in_flight) {
                        start_scheduled(d);
                        if (flush_conn(ep, d) < 0) w->errors++;
                    }
                }
                continue;
            }
            int rc = 0;
            if (events[i].events & EPOLLIN) rc = on_read(ep, w, c, scratch, scratch_len);
            else if (events[i].events & EPOLLOUT) rc = flush_conn(ep, c);
            if ((events[i].events & (EPOLLERR | EPOLLHUP)) && rc == 0) rc = -1;
            if (rc != 0 && opt.reconnect) {            // done or failed: the next connection
                if (rc < 0) w->errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                if (reopen_conn(ep, c) < 0) w->errors++;
                continue;
            }
            if (rc < 0) {
                w->errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            }
        }
    }
    if (tfd >= 0) close(tfd);
    close(ep);
    free(scratch);
    return NULL;
}

static void usage(void) {
    fprintf(stderr,
            "usage: pingpong --port P [--host 127.0.0.1] [--connections C] [--size B] [--seconds S]\n"
            "                [--threads T] [--rate R] [--frame-proto] [--msg-id N] [--idle] [--reconnect]\n"
            "                [--warmup W]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option longopts[] = {
        {"host", required_argument, 0, 'h'},    {"port", required_argument, 0, 'p'},
        {"connections", required_argument, 0, 'c'}, {"size", required_argument, 0, 'b'},
        {"seconds", required_argument, 0, 's'}, {"threads", required_argument, 0, 't'},
        {"rate", required_argument, 0, 'r'},    {"frame-proto", no_argument, 0, 'f'},
        {"msg-id", required_argument, 0, 'm'},  {"idle", no_argument, 0, 'i'},
        {"reconnect", no_argument, 0, 'n'},     {"warmup", required_argument, 0, 'w'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'c': opt.connections = atoi(optarg); break;
        case 'b': opt.size = atol(optarg); break;
        case 's': opt.seconds = atof(optarg); break;
        case 't': opt.threads = atoi(optarg); break;
        case 'r': opt.rate = atof(optarg); break;
        case 'f': opt.frame = 1; break;
        case 'm': opt.msg_id = atoi(optarg); break;
        case 'i': opt.idle = 1; break;
        case 'n': opt.reconnect = 1; break;
        case 'w': opt.warmup = atof(optarg); break;
        default: usage();
        }
    }
    if (opt.port <= 0 || opt.connections <= 0 || opt.size <= 0 || opt.seconds <= 0 || opt.threads <= 0) usage();
    if (opt.reconnect && (opt.idle || opt.rate > 0)) usage();
    if (opt.warmup >= 0 && opt.idle) usage();
    if (opt.threads > opt.connections) opt.threads = opt.connections;
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    build_message();
    resolve_server();

    conn_t *conns = calloc((size_t)opt.connections, sizeof *conns);
    for (int i = 0; i < opt.connections && !opt.reconnect; i++) {
        conns[i].fd = connect_one();
        if (conns[i].fd < 0) {
            fprintf(stderr, "pingpong: connect #%d to %s:%d failed: %s\n", i, opt.host, opt.port, strerror(errno));
            return 1;
        }
        set_nonblocking(conns[i].fd);
    }
    if (opt.idle) {
        printf("connected %d\n", opt.connections);
        fflush(stdout);
        struct timespec ts = {(time_t)opt.seconds, (long)((opt.seconds - (double)(time_t)opt.seconds) * 1e9)};
        nanosleep(&ts, NULL);
        return 0;
    }

    worker_t *workers = calloc((size_t)opt.threads, sizeof *workers);
    window_start = now_ns() + (opt.warmup > 0 ? (uint64_t)(opt.warmup * 1e9) : 0);
    window_end = window_start + (uint64_t)(opt.seconds * 1e9);
    for (int i = 0, first = 0; i < opt.threads; i++) {
        int count = opt.connections / opt.threads + (i < opt.connections % opt.threads);
        workers[i].first = first;
        workers[i].count = count;
        workers[i].conns = conns + first;
        workers[i].rate = opt.rate * count / opt.connections;
        first += count;
        pthread_create(&workers[i].tid, NULL, run_worker, &workers[i]);
    }
    if (opt.warmup >= 0) {
        uint64_t t = now_ns();
        if (t < window_start) {
            struct timespec ts = {(time_t)((window_start - t) / 1000000000ULL),
                                  (long)((window_start - t) % 1000000000ULL)};
            nanosleep(&ts, NULL);
        }
        fprintf(stderr, "measuring\n");
        fflush(stderr);
    }
    histo_t *all = calloc(1, sizeof *all);
    uint64_t messages = 0, bytes = 0, missed = 0, errors = 0;
    for (int i = 0; i < opt.threads; i++) {
        pthread_join(workers[i].tid, NULL);
        for (int b = 0; b < NBUCKETS; b++) all->count[b] += workers[i].hist.count[b];
        all->total += workers[i].hist.total;
        messages += workers[i].messages;
        bytes += workers[i].bytes;
        missed += workers[i].missed;
        errors += workers[i].errors;
    }
    double elapsed = (double)(now_ns() - window_start) / 1e9;
    if (opt.warmup >= 0) {
        fprintf(stderr, "measured\n");
        fflush(stderr);
    }
    for (int i = 0; i < opt.connections; i++) {
        if (conns[i].fd >= 0) close(conns[i].fd);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    printf("{\"msgs_per_sec\": %.1f, \"mib_per_sec\": %.2f, \"p50_us\": %.1f, \"p99_us\": %.1f, "
           "\"client_cpu_s\": %.3f, \"connections\": %d, \"size\": %ld, \"seconds\": %.3f, "
           "\"messages\": %llu, \"frame_bytes\": %zu, \"rate\": %.1f, \"missed\": %llu, \"errors\": %llu, "
           "\"connections_per_sec\": %.1f}\n",
           (double)messages / elapsed, (double)bytes / elapsed / 1048576.0, percentile_us(all, 0.50),
           percentile_us(all, 0.99), cpu, opt.connections, opt.size, elapsed, (unsigned long long)messages,
           msglen, opt.rate, (unsigned long long)missed, (unsigned long long)errors,
           opt.reconnect ? (double)messages / elapsed : 0.0);
    return errors > 0 && messages == 0 ? 1 : 0;
}
