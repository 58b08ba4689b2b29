/*
 * epoll_echo -- the measurement floor: the least work a Linux TCP echo server can do.
 *
 *   usage: epoll_echo [PORT]        (0 or absent: an ephemeral port)
 *
 * Binds 127.0.0.1:PORT, prints "LISTENING <port>" on stdout, then serves until SIGTERM or
 * SIGINT, and exits 0 after closing every socket.
 *
 * One thread, one level-triggered epoll set. Per readable socket: one read() into a shared
 * 64 KiB buffer and one write() of the same bytes -- two syscalls per round trip plus a share of
 * epoll_wait, which is what every faster-looking server must also pay on loopback. If the peer's
 * window is full and the write is short, the rest goes into that connection's own buffer, the
 * socket stops being read (EPOLLIN off, EPOLLOUT on) until that buffer has drained: no byte is
 * ever dropped and a client that does not read cannot make the server buffer without bound.
 *
 * EMFILE on accept is handled with a spare descriptor: with level-triggered epoll, a listener
 * whose pending connection cannot be accepted would otherwise wake the loop forever.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define MAX_EVENTS 256
#define LISTEN_TAG UINT32_MAX

typedef struct {
    char *pend;         /* bytes read but not yet written back */
    size_t len, off;
} conn_t;

static volatile sig_atomic_t stop_flag;
static conn_t *conns;   /* indexed by fd */
static size_t nconns;
static int ep, lfd, spare_fd = -1;
static char buf[BUF_SIZE];

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void close_conn(int fd)
{
    free(conns[fd].pend);
    conns[fd].pend = NULL;
    conns[fd].len = conns[fd].off = 0;
    close(fd);  /* leaves the epoll set with it */
}

static int watch(int op, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)fd};
    return epoll_ctl(ep, op, fd, &ev);
}

/* Write pending bytes; 1 = all written, 0 = still pending, -1 = connection gone. */
static int flush_pending(int fd)
{
    conn_t *c = &conns[fd];
    while (c->off < c->len) {
        ssize_t w = write(fd, c->pend + c->off, c->len - c->off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        c->off += (size_t)w;
    }
    free(c->pend);
    c->pend = NULL;
    c->len = c->off = 0;
    return 1;
}

static void on_writable(int fd)
{
    int r = flush_pending(fd);
    if (r < 0)
        close_conn(fd);
    else if (r > 0)
        watch(EPOLL_CTL_MOD, fd, EPOLLIN);
}

static void on_readable(int fd)
{
    ssize_t n;
    do {
        n = read(fd, buf, sizeof buf);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {               /* EOF or reset */
        close_conn(fd);
        return;
    }
    size_t done = 0;
    while (done < (size_t)n) {
        ssize_t w = write(fd, buf + done, (size_t)n - done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            close_conn(fd);
            return;
        }
        done += (size_t)w;
    }
    if (done < (size_t)n) {     /* keep the rest; stop reading until it is gone */
        conn_t *c = &conns[fd];
        c->len = (size_t)n - done;
        c->off = 0;
        c->pend = malloc(c->len);
        if (!c->pend) {
            close_conn(fd);
            return;
        }
        memcpy(c->pend, buf + done, c->len);
        watch(EPOLL_CTL_MOD, fd, EPOLLOUT);
    }
}

static void on_accept(void)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if ((errno == EMFILE || errno == ENFILE) && spare_fd >= 0) {
                /* refuse one pending connection rather than spin on it */
                close(spare_fd);
                int victim = accept(lfd, NULL, NULL);
                if (victim >= 0)
                    close(victim);
                spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                continue;
            }
            return;             /* EAGAIN, or nothing more we can do now */
        }
        if ((size_t)fd >= nconns) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (watch(EPOLL_CTL_ADD, fd, EPOLLIN) < 0)
            close(fd);
    }
}

int main(int argc, char **argv)
{
    long port = 0;
    if (argc > 2 || (argc == 2 && (port = strtol(argv[1], NULL, 10)) < 0) || port > 65535) {
        fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
        return 2;
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    nconns = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 22) ? (1u << 22) : (size_t)rl.rlim_cur;
    conns = calloc(nconns, sizeof *conns);
    if (!conns) {
        perror("calloc");
        return 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;  /* no SA_RESTART: epoll_wait returns EINTR and we look at the flag */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0) {
        perror("bind");
        return 1;
    }
    if (listen(lfd, 65535) < 0) {   /* clamped to net.core.somaxconn */
        perror("listen");
        return 1;
    }
    socklen_t slen = sizeof sin;
    getsockname(lfd, (struct sockaddr *)&sin, &slen);
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("epoll_create1");
        return 1;
    }
    struct epoll_event lev = {.events = EPOLLIN, .data.u32 = LISTEN_TAG};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);

    printf("LISTENING %u\n", (unsigned)ntohs(sin.sin_port));
    fflush(stdout);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop_flag) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            uint32_t tag = evs[i].data.u32;
            uint32_t e = evs[i].events;
            if (tag == LISTEN_TAG) {
                on_accept();
                continue;
            }
            int fd = (int)tag;
            /* A connection closed earlier in this batch leaves a stale event. Its fd can only
             * have been reused by accept (a fresh socket: the read finds EAGAIN) or by the
             * spare descriptor, which must not be mistaken for a connection. */
            if (fd == spare_fd)
                continue;
            if (conns[fd].pend) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                    on_writable(fd);
            } else if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                on_readable(fd);
            }
        }
    }

    for (size_t fd = 0; fd < nconns; fd++)
        if (conns[fd].pend)
            free(conns[fd].pend);
    close(ep);
    close(lfd);
    return 0;
}
