/*
 * masterproxy.c: an fd-passing MasterProxy in plain C, on the fdpass adapter kit
 * (fdpass_adapter.h: protocol 2, docs/adapter.md). This file is the proxy; the kit
 * speaks the protocol, forks the workers and keeps the table of fds handed out.
 *
 * The master accepts each connection and passes it to a worker with
 * SCM_RIGHTS over an AF_UNIX SOCK_SEQPACKET socket pair; a private System V
 * message queue (msgget(IPC_PRIVATE, 0600)) carries "idle" tokens, so that a
 * worker waiting in accept() is preferred over a busy one. Every error keeps
 * the errno of the call that failed and names that call. A token's message type is
 * the worker's index + 1, so a worker can take its own token back when it got a
 * connection without one (round-robin) and is no longer idle.
 *
 *   cc -O2 -Wall -Werror -o masterproxy masterproxy.c fdpass_adapter.c
 *   pytest --fdpass-impl=exec:./masterproxy
 *
 * Compile-time switches for the conformance toolkit's own tests:
 *   -DBROKEN_NO_CLOEXEC  workers receive connections without MSG_CMSG_CLOEXEC
 *                        (the broken twin: fails FP-05 and SP-20)
 *   -DEXIT_ON_REQUEST=N  the master exits (status 3) on its N-th request
 *   -DBROKEN_NO_ERRNO    (a switch of the kit) error replies carry no errno, as from
 *                        a library whose exceptions have none
 *   -DBROKEN_NO_REAP     (a switch of the kit) the master never reaps its workers
 *   -DRELEASE_DEAD_WORKERS  (still correct) the master closes the channel end of a
 *                        worker whose sendmsg failed with EPIPE; that worker leaves
 *   -DBROKEN_QUIT_AFTER=N   a worker exits (status 0) after releasing N connections
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fdpass_adapter.h"

#define MAX_WORKERS 64
#define MAX_LISTENERS 16

#ifdef BROKEN_NO_CLOEXEC
#define RECV_FLAGS 0
#else
#define RECV_FLAGS MSG_CMSG_CLOEXEC
#endif

/* The kit's names, short. */
#define reply_error fdpass_reply_error
#define os_error fdpass_os_error
#define want_int fdpass_want_int
#define get fdpass_arg
#define type_name fdpass_type_name
#define J_NULL FDPASS_NULL
#define J_INT FDPASS_INT
#define J_FLOAT FDPASS_FLOAT
#define J_STRING FDPASS_STRING
typedef struct fdpass_request request_t;
typedef struct fdpass_value jval_t;

static pid_t owner;                   /* the master: only it removes the queue */
static int listeners[MAX_LISTENERS];  /* returned by create_socket, still open */
static int nlisteners;
static int qid = -1;                  /* the idle-token queue */
static int nworkers;                  /* channels open when > 0 */
static int mends[MAX_WORKERS];        /* master ends of the channels */
static int wends[MAX_WORKERS];        /* worker ends, until the first dispatch */
static int dead[MAX_WORKERS];
static int next_rr;
/* worker side */
static int chan = -1, token_out;
static int nheld; /* connections accepted and not yet released */

struct token {
    long mtype; /* worker index + 1 */
    int index;
};

static void close_fd(int *fd) {
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void remove_queue(void) {
    if (qid >= 0 && getpid() == owner)
        msgctl(qid, IPC_RMID, NULL); /* EIDRM/EINVAL: removed from outside; fine */
    qid = -1;
}

static void close_channels(void) {
    for (int i = 0; i < nworkers; i++) {
        close_fd(&mends[i]);
        close_fd(&wends[i]);
    }
    nworkers = 0;
}

static void close_listeners(void) {
    while (nlisteners)
        close(listeners[--nlisteners]);
}

static int queue_gone(int err) { return err == EIDRM || err == EINVAL; }

/* An idle token for worker i; 1 if it is in the queue. A full or vanished queue only
 * costs the preference, never the connection. */
static int post_token(int i) {
    struct token t = {i + 1, i};
    if (qid < 0)
        return 0;
    for (;;) {
        if (msgsnd(qid, &t, sizeof t.index, IPC_NOWAIT) == 0)
            return 1;
        if (errno == EINTR)
            continue;
        if (queue_gone(errno))
            qid = -1;
        return 0;
    }
}

/* The worker to try next: an idle one from the queue, else the next live one. */
static int pick(const int *busy, int *via_token) {
    struct token t;
    int deferred[MAX_WORKERS], ndeferred = 0, found = -1;
    *via_token = 0;
    while (qid >= 0) {
        ssize_t n = msgrcv(qid, &t, sizeof t.index, 0, IPC_NOWAIT); /* the oldest token */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (queue_gone(errno))
                qid = -1;
            break; /* ENOMSG: nobody idle */
        }
        t.index = (int)t.mtype - 1;
        if (t.index < 0 || t.index >= nworkers || dead[t.index])
            continue; /* a stale token of a dead worker */
        if (busy[t.index]) {
            if (ndeferred < MAX_WORKERS)
                deferred[ndeferred++] = t.index;
            continue;
        }
        found = t.index;
        *via_token = 1;
        break;
    }
    for (int k = 0; k < ndeferred; k++)
        post_token(deferred[k]);
    if (found >= 0)
        return found;
    for (int k = 0; k < nworkers; k++) {
        int i = (next_rr + k) % nworkers;
        if (!dead[i] && !busy[i]) {
            next_rr = i + 1;
            return i;
        }
    }
    return -1;
}

static int send_fd(int sock, int fd, char tag) {
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {.iov_base = &tag, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    return sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) == 1 ? 0 : -1;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining_ms(long long deadline) {
    if (deadline < 0)
        return -1;
    long long left = deadline - now_ms();
    return left > 0 ? (int)left : 0;
}

static int master_only(const char *op) {
    if (fdpass_worker_index() < 0)
        return 1;
    os_error(EINVAL, "%s: not allowed in worker %d", op, fdpass_worker_index());
    return 0;
}

static void op_create_socket(const request_t *rq) {
    const jval_t *port = get(rq, "port"), *proto = get(rq, "protocol");
    if (!want_int("create_socket", "port", port))
        return;
    if (port->big || port->i < 0 || port->i > 65535) {
        reply_error("ValueError", 0, "create_socket: port %lld%s is outside 0..65535", port->i,
                    port->big ? " (and more)" : "");
        return;
    }
    if (proto && !(proto->type == J_STRING && (!strcmp(proto->s, "tcp") ||
                                               !strcmp(proto->s, "http") ||
                                               !strcmp(proto->s, "websocket")))) {
        reply_error("ValueError", 0, "create_socket: unknown protocol (%s %s); expected tcp, "
                    "http or websocket", type_name(proto), proto->type == J_STRING ? proto->s : "");
        return;
    }
    if (!master_only("create_socket"))
        return;
    if (nlisteners == MAX_LISTENERS) {
        os_error(EMFILE, "create_socket: more than %d listeners", MAX_LISTENERS);
        return;
    }
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, err;
    if (s < 0) {
        os_error(errno, "create_socket: socket() failed");
        return;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port->i)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const char *step = "setsockopt(SO_REUSEADDR)";
    if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0) {
        step = "bind(127.0.0.1)";
        if (bind(s, (struct sockaddr *)&addr, sizeof addr) == 0) {
            step = "listen()";
            if (listen(s, SOMAXCONN) == 0) {
                listeners[nlisteners++] = s;
                fdpass_reply_fd(s);
                return;
            }
        }
    }
    err = errno;
    close(s);
    os_error(err, "create_socket: %s failed", step);
}

static void op_open_channels(const request_t *rq) {
    const jval_t *w = get(rq, "workers");
    if (!want_int("open_channels", "workers", w))
        return;
    if (w->big || w->i < 1 || w->i > MAX_WORKERS) {
        reply_error("ValueError", 0, "open_channels: workers must be within 1..%d", MAX_WORKERS);
        return;
    }
    if (!master_only("open_channels"))
        return;
    if (nworkers) {
        os_error(EINVAL, "open_channels: channels are already open");
        return;
    }
    qid = msgget(IPC_PRIVATE, IPC_CREAT | IPC_EXCL | 0600);
    if (qid < 0) {
        os_error(errno, "open_channels: msgget(IPC_PRIVATE) for the idle queue failed");
        return;
    }
    int n = (int)w->i;
    for (int i = 0; i < n; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
            int err = errno;
            nworkers = i;
            close_channels();
            remove_queue();
            os_error(err, "open_channels: socketpair for worker %d failed", i);
            return;
        }
        mends[i] = sv[0];
        wends[i] = sv[1];
        dead[i] = 0;
    }
    nworkers = n;
    next_rr = 0;
    fdpass_reply_null();
}

static void op_dispatch(const request_t *rq, int listener) {
    const jval_t *t = get(rq, "timeout");
    if (!master_only("dispatch"))
        return;
    if (!nworkers) {
        os_error(EINVAL, "dispatch: call create_socket() and open_channels() first");
        return;
    }
    if (t && t->type != J_NULL && t->type != J_INT && t->type != J_FLOAT) {
        reply_error("TypeError", 0, "dispatch: timeout must be a number or None");
        return;
    }
    /* From the first dispatch on the master holds no worker end: a dead worker's
     * channel then reports EPIPE instead of swallowing fds. */
    for (int i = 0; i < nworkers; i++)
        close_fd(&wends[i]);
    long long deadline = -1;
    if (t && t->type != J_NULL)
        deadline = now_ms() + (t->f > 0 ? (long long)(t->f * 1000.0) : 0);
    int r;
    while ((r = fdpass_wait_readable(listener, remaining_ms(deadline))) < 0 && errno == EINTR)
        ;
    if (r == 0) {
        reply_error("TimeoutError", ETIMEDOUT, "dispatch: no connection within %gs",
                    t ? t->f : 0.0);
        return;
    }
    if (r < 0) {
        os_error(errno, "dispatch: poll() on the listener failed");
        return;
    }
    int conn;
    do
        conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    while (conn < 0 && errno == EINTR);
    if (conn < 0) {
        os_error(errno, "dispatch: accept() failed");
        return;
    }
    int busy[MAX_WORKERS] = {0};
    for (;;) {
        int via_token, i = pick(busy, &via_token);
        if (i < 0) {
            int nbusy = 0;
            struct pollfd out[MAX_WORKERS];
            for (int k = 0; k < nworkers; k++)
                if (busy[k] && !dead[k])
                    out[nbusy++] = (struct pollfd){.fd = mends[k], .events = POLLOUT};
            if (!nbusy) {
                close(conn);
                os_error(EPIPE, "dispatch: no live worker (all %d channels are closed); "
                                "connection closed", nworkers);
                return;
            }
            if (poll(out, (nfds_t)nbusy, remaining_ms(deadline)) == 0) {
                close(conn);
                reply_error("TimeoutError", ETIMEDOUT, "dispatch: every live worker's channel "
                            "stayed full; connection closed");
                return;
            }
            memset(busy, 0, sizeof busy);
            continue;
        }
        if (send_fd(mends[i], conn, via_token ? 'T' : 'R') == 0) {
            close(conn); /* the worker has its own copy now */
            fdpass_reply_int(i);
            return;
        }
        int err = errno;
        if (err == EINTR)
            continue;
        if (err == EAGAIN) {
            busy[i] = 1;
            if (via_token)
                post_token(i); /* give the worker its place back */
            continue;
        }
        if (err == EPIPE || err == ECONNREFUSED || err == ECONNRESET) {
            dead[i] = 1; /* route around a dead worker */
#ifdef RELEASE_DEAD_WORKERS
            close_fd(&mends[i]);
#endif
            continue;
        }
        close(conn);
        os_error(err, "dispatch: sendmsg to worker %d failed", i);
        return;
    }
}

static void op_enter_worker(const request_t *rq) {
    const jval_t *index = get(rq, "index");
    if (!want_int("enter_worker", "index", index))
        return;
    if (!nworkers) {
        os_error(EINVAL, "enter_worker: call open_channels() first");
        return;
    }
    if (index->big || index->i < 0 || index->i >= nworkers) {
        reply_error("ValueError", 0, "enter_worker: index outside 0..%d", nworkers - 1);
        return;
    }
    int my_index = fdpass_worker_index();
    if (my_index < 0) {
        os_error(EINVAL, "enter_worker: this is the master; call it in a forked worker");
        return;
    }
    if (index->i != my_index || chan >= 0) {
        os_error(EINVAL, "enter_worker(%lld): this process is worker %d%s", index->i, my_index,
                 chan >= 0 ? " and entered already" : "");
        return;
    }
    /* Keep this worker's end; drop everything else the fork duplicated. */
    chan = wends[my_index];
    wends[my_index] = -1;
    close_channels();
    close_listeners();
    token_out = post_token(my_index); /* idle from now on */
    fdpass_reply_null();
}

static void op_accept(const request_t *rq, int listener) {
    int my_index = fdpass_worker_index();
    (void)rq, (void)listener; /* a worker's connections come from its channel */
    if (chan < 0) {
        os_error(EINVAL, "accept: call enter_worker() first%s", my_index >= 0 ? "" : " (this "
                 "is the master)");
        return;
    }
    if (!token_out)
        token_out = post_token(my_index);
    if (fdpass_wait_readable(chan, -1) < 0) { /* the adapter's end exits meanwhile */
        os_error(errno, "accept: poll() failed");
        return;
    }
    char tag = 0;
    union {
        char buf[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {.iov_base = &tag, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = sizeof u.buf};
    ssize_t n;
    do
        n = recvmsg(chan, &msg, RECV_FLAGS);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        os_error(errno, "accept: recvmsg() on the channel failed");
        return;
    }
    int fds[4], nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t j = 0; j < k && nfds < 4; j++)
                memcpy(&fds[nfds++], CMSG_DATA(c) + j * sizeof(int), sizeof(int));
        }
    if (msg.msg_flags & MSG_CTRUNC) {
        while (nfds)
            close(fds[--nfds]);
        os_error(EMFILE, "accept: recvmsg() truncated the passed fd (MSG_CTRUNC), the worker's "
                         "fd table is full; the connection was dropped");
        return;
    }
    if (n == 0 && nfds == 0) {
        reply_error("EOFError", 0, "accept: the master closed the channel");
        return;
    }
    if (nfds != 1) {
        while (nfds)
            close(fds[--nfds]);
        os_error(EBADMSG, "accept: expected 1 fd from the master");
        return;
    }
    if (tag == 'T') {
        token_out = 0; /* the master used this worker's token */
    } else if (token_out && qid >= 0) {
        /* Sent round-robin: take our token back, we are busy now. If it is gone, the
         * master took it meanwhile and a connection with it is on its way. */
        struct token t;
        while (msgrcv(qid, &t, sizeof t.index, my_index + 1, IPC_NOWAIT) < 0 && errno == EINTR)
            ;
        token_out = 0;
    }
    nheld++;
    fdpass_reply_fd(fds[0]);
}

/* The adapter is done with a listener or a connection this process handed out. */
static void op_release(int fd) {
    for (int k = 0; k < nlisteners; k++)
        if (listeners[k] == fd) {
            listeners[k] = listeners[--nlisteners];
            close(fd);
            return;
        }
    close(fd);
#ifdef BROKEN_QUIT_AFTER
    static int released;
    if (++released == BROKEN_QUIT_AFTER)
        _exit(0);
#endif
    if (nheld > 0 && !--nheld && chan >= 0 && !token_out) /* done with it: idle again */
        token_out = post_token(fdpass_worker_index());
}

static void op_close(const request_t *rq) {
    (void)rq;
    close_listeners();
    close_channels();
    close_fd(&chan);
    if (fdpass_worker_index() >= 0)
        qid = -1; /* a worker never removes or changes the master's queue */
    else
        remove_queue();
    fdpass_reply_null();
}

static void op_is_supported(const request_t *rq) {
    (void)rq;
    fdpass_reply_bool(1);
}

#ifdef EXIT_ON_REQUEST
static void count_request(const char *op) {
    static int requests;
    (void)op;
    if (++requests == EXIT_ON_REQUEST) {
        fprintf(stderr, "masterproxy: exiting on request %d as compiled\n", requests);
        exit(3);
    }
}
#endif

int main(void) {
    static const struct fdpass_proxy proxy = {
        .name = "c-masterproxy",
        .capability = "fd-passing",
        .is_supported = op_is_supported,
        .create_socket = op_create_socket,
        .open_channels = op_open_channels,
        .enter_worker = op_enter_worker,
        .dispatch = op_dispatch,
        .accept = op_accept,
        .close = op_close,
        .release = op_release,
#ifdef EXIT_ON_REQUEST
        .before_request = count_request,
#endif
    };
    owner = getpid();
    return fdpass_run(&proxy);
}
