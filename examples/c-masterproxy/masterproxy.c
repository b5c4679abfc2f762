/*
 * masterproxy.c: an fd-passing MasterProxy in plain C, behind the fdpass
 * adapter protocol 1 (docs/adapter.md).
 *
 * The master accepts each connection and passes it to a worker with
 * SCM_RIGHTS over an AF_UNIX SOCK_SEQPACKET socket pair; a private System V
 * message queue (msgget(IPC_PRIVATE, 0600)) carries "idle" tokens, so that a
 * worker waiting in accept() is preferred over a busy one. Every error keeps
 * the errno of the call that failed and names that call. A token's message type is
 * the worker's index + 1, so a worker can take its own token back when it got a
 * connection without one (round-robin) and is no longer idle.
 *
 *   cc -O2 -Wall -Werror -o masterproxy masterproxy.c
 *   pytest --fdpass-impl=exec:./masterproxy
 *
 * Compile-time switches for the conformance toolkit's own tests:
 *   -DBROKEN_NO_CLOEXEC  workers receive connections without MSG_CMSG_CLOEXEC
 *                        (the broken twin: fails FP-05 and SP-20)
 *   -DEXIT_ON_REQUEST=N  the master exits (status 3) on its N-th request
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL 1
#define MAX_WORKERS 64
#define MAX_LISTENERS 16
#define MAX_HELD 16
#define MAX_LINE 65536
#define MAX_FIELDS 16

#ifdef BROKEN_NO_CLOEXEC
#define RECV_FLAGS 0
#else
#define RECV_FLAGS MSG_CMSG_CLOEXEC
#endif

/* ---- a JSON reader for the flat request objects of the protocol ---------- */

enum jtype { J_NONE, J_NULL, J_BOOL, J_INT, J_FLOAT, J_STRING, J_OTHER };

struct jval {
    enum jtype type;
    long long i; /* J_INT, J_BOOL */
    int big;     /* J_INT that does not fit in a long long */
    double f;    /* J_FLOAT (and J_INT) */
    char s[256]; /* J_STRING, truncated */
};

struct field {
    char key[32];
    struct jval v;
};

struct request {
    int n;
    struct field f[MAX_FIELDS];
};

static const char *skip_ws(const char *p) {
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
        p++;
    return p;
}

/* p at the opening quote; returns the char after the closing quote, or NULL. */
static const char *parse_string(const char *p, char *out, size_t cap) {
    size_t n = 0;
    p++;
    while (*p && *p != '"') {
        char c = *p++;
        if (c == '\\') {
            char e = *p++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned code = 0;
                for (int k = 0; k < 4; k++, p++) {
                    char h = *p;
                    if (!h)
                        return NULL;
                    code = code * 16 + (unsigned)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
                }
                c = code < 0x80 ? (char)code : '?';
                break;
            }
            case '\0': return NULL;
            default: c = e; /* \" \\ \/ */
            }
        }
        if (n + 1 < cap)
            out[n++] = c;
    }
    if (*p != '"')
        return NULL;
    if (cap)
        out[n] = '\0';
    return p + 1;
}

/* Skips a nested object or array (the protocol never sends one; tolerate it). */
static const char *skip_nested(const char *p) {
    int depth = 0;
    char tmp[2];
    do {
        if (*p == '"') {
            p = parse_string(p, tmp, sizeof tmp);
            if (!p)
                return NULL;
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if (*p == '}' || *p == ']')
            depth--;
        else if (!*p)
            return NULL;
        p++;
    } while (depth > 0);
    return p;
}

static const char *parse_value(const char *p, struct jval *v) {
    memset(v, 0, sizeof *v);
    if (*p == '"') {
        v->type = J_STRING;
        return parse_string(p, v->s, sizeof v->s);
    }
    if (*p == '{' || *p == '[') {
        v->type = J_OTHER;
        return skip_nested(p);
    }
    if (!strncmp(p, "true", 4) || !strncmp(p, "false", 5)) {
        v->type = J_BOOL;
        v->i = *p == 't';
        return p + (*p == 't' ? 4 : 5);
    }
    if (!strncmp(p, "null", 4)) {
        v->type = J_NULL;
        return p + 4;
    }
    const char *start = p;
    int is_float = 0;
    while (*p && strchr("+-0123456789.eE", *p)) {
        if (*p == '.' || *p == 'e' || *p == 'E')
            is_float = 1;
        p++;
    }
    if (p == start)
        return NULL;
    char num[64];
    size_t len = (size_t)(p - start) < sizeof num - 1 ? (size_t)(p - start) : sizeof num - 1;
    memcpy(num, start, len);
    num[len] = '\0';
    v->f = strtod(num, NULL);
    if (is_float) {
        v->type = J_FLOAT;
        return p;
    }
    v->type = J_INT;
    errno = 0;
    v->i = strtoll(num, NULL, 10);
    v->big = errno == ERANGE || (size_t)(p - start) >= sizeof num - 1;
    return p;
}

/* A flat JSON object into rq; -1 if it is not one. */
static int parse_object(const char *line, struct request *rq) {
    const char *p = skip_ws(line);
    rq->n = 0;
    if (*p++ != '{')
        return -1;
    p = skip_ws(p);
    if (*p == '}')
        return 0;
    for (;;) {
        struct field scratch, *f = rq->n < MAX_FIELDS ? &rq->f[rq->n] : &scratch;
        p = skip_ws(p);
        if (*p != '"' || !(p = parse_string(p, f->key, sizeof f->key)))
            return -1;
        p = skip_ws(p);
        if (*p++ != ':')
            return -1;
        p = skip_ws(p);
        if (!(p = parse_value(p, &f->v)))
            return -1;
        if (f != &scratch)
            rq->n++;
        p = skip_ws(p);
        if (*p == '}')
            return 0;
        if (*p++ != ',')
            return -1;
    }
}

static const struct jval *get(const struct request *rq, const char *key) {
    for (int k = 0; k < rq->n; k++)
        if (!strcmp(rq->f[k].key, key))
            return &rq->f[k].v;
    return NULL;
}

static const char *type_name(const struct jval *v) {
    static const char *names[] = {"nothing", "null", "bool", "int", "float", "str", "object"};
    return v ? names[v->type] : names[0];
}

/* ---- the control connection ---------------------------------------------- */

static int ctl = -1;
static char inbuf[MAX_LINE];
static size_t inlen;

static int connect_adapter(void) {
    const char *path = getenv("FDPASS_ADAPTER_SOCKET");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (!path || strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "masterproxy: FDPASS_ADAPTER_SOCKET is not set (run me through the "
                        "fdpass adapter: pytest --fdpass-impl=exec:...)\n");
        return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "masterproxy: connect(%s) failed: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* The next line from the adapter (without its newline); NULL at EOF. */
static char *read_line(void) {
    static char line[MAX_LINE];
    for (;;) {
        char *nl = memchr(inbuf, '\n', inlen);
        if (nl) {
            size_t len = (size_t)(nl - inbuf);
            memcpy(line, inbuf, len);
            line[len] = '\0';
            inlen -= len + 1;
            memmove(inbuf, nl + 1, inlen);
            return line;
        }
        if (inlen == sizeof inbuf)
            return NULL; /* an overlong line: treat as the end */
        ssize_t n = recv(ctl, inbuf + inlen, sizeof inbuf - inlen, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NULL;
        inlen += (size_t)n;
    }
}

/* A reply line; with fd >= 0 that fd travels with it (SCM_RIGHTS). Plain replies
 * use send(), so that syscall faults injected into sendmsg hit only the data path. */
static void send_line(const char *text, int fd) {
    size_t len = strlen(text);
    if (fd < 0) {
        while (len) {
            ssize_t n = send(ctl, text, len, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                _exit(0); /* the adapter is gone */
            text += n;
            len -= (size_t)n;
        }
        return;
    }
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {.iov_base = (void *)text, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = sizeof u.buf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    ssize_t n;
    do
        n = sendmsg(ctl, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        _exit(0);
    if ((size_t)n < len)
        send_line(text + n, -1);
}

static void json_escape(char *out, size_t cap, const char *in) {
    size_t n = 0;
    for (; *in && n + 7 < cap; in++) {
        unsigned char c = (unsigned char)*in;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
}

static void reply_ok(const char *result) {
    char line[512];
    snprintf(line, sizeof line, "{\"ok\":true,\"result\":%s}\n", result);
    send_line(line, -1);
}

static void reply_int(long long value) {
    char text[32];
    snprintf(text, sizeof text, "%lld", value);
    reply_ok(text);
}

static void reply_fd(int fd) {
    char line[128];
    snprintf(line, sizeof line, "{\"ok\":true,\"result\":{\"fd\":%d}}\n", fd);
    send_line(line, fd);
}

/* An error reply: kind is OSError, TimeoutError, EOFError, ValueError, TypeError, ... */
static void reply_error(const char *kind, int err, const char *fmt, ...) {
    char message[512], escaped[1024], line[1280];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    json_escape(escaped, sizeof escaped, message);
    if (err)
        snprintf(line, sizeof line, "{\"ok\":false,\"error\":\"%s\",\"errno\":%d,\"message\":\"%s\"}\n",
                 kind, err, escaped);
    else
        snprintf(line, sizeof line, "{\"ok\":false,\"error\":\"%s\",\"message\":\"%s\"}\n", kind,
                 escaped);
    send_line(line, -1);
}

static void os_error(int err, const char *fmt, ...) {
    char message[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    reply_error("OSError", err, "%s: %s", message, strerror(err));
}

/* hello, and the adapter's answer to it; 0 if accepted. */
static int handshake(const char *hello) {
    struct request rq;
    send_line(hello, -1);
    char *line = read_line();
    if (!line || parse_object(line, &rq) < 0)
        return -1;
    const struct jval *ok = get(&rq, "ok");
    return ok && ok->type == J_BOOL && ok->i ? 0 : -1;
}

/* ---- the proxy ----------------------------------------------------------- */

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
static int is_worker, my_index = -1, chan = -1, token_out;
static int held[MAX_HELD], nheld; /* accepted fds the adapter has not released yet */

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

static int is_listener(long long fd) {
    for (int k = 0; k < nlisteners; k++)
        if (listeners[k] == fd)
            return 1;
    return 0;
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

static int want_int(const char *op, const char *name, const struct jval *v) {
    if (!v || v->type != J_INT) {
        reply_error("TypeError", 0, "%s: %s must be an int, got %s", op, name, type_name(v));
        return 0;
    }
    return 1;
}

static int master_only(const char *op) {
    if (!is_worker)
        return 1;
    os_error(EINVAL, "%s: not allowed in worker %d", op, my_index);
    return 0;
}

static void op_create_socket(const struct request *rq) {
    const struct jval *port = get(rq, "port"), *proto = get(rq, "protocol");
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
                reply_fd(s);
                return;
            }
        }
    }
    err = errno;
    close(s);
    os_error(err, "create_socket: %s failed", step);
}

static void op_open_channels(const struct request *rq) {
    const struct jval *w = get(rq, "workers");
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
    reply_ok("null");
}

static void worker_loop(void);

static void op_fork_worker(const struct request *rq) {
    const struct jval *index = get(rq, "index");
    if (!want_int("fork_worker", "index", index) || !master_only("fork_worker"))
        return;
    if (!nworkers) {
        os_error(EINVAL, "fork_worker: call open_channels() first");
        return;
    }
    if (index->big || index->i < 0 || index->i >= nworkers) {
        reply_error("ValueError", 0, "fork_worker: index outside 0..%d", nworkers - 1);
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        os_error(errno, "fork_worker: fork() failed");
        return;
    }
    if (pid == 0) {
        char hello[160];
        is_worker = 1;
        my_index = (int)index->i;
        close_fd(&ctl); /* the master's connection is the master's alone */
        inlen = 0;
        if ((ctl = connect_adapter()) < 0)
            _exit(1);
        snprintf(hello, sizeof hello,
                 "{\"hello\":{\"protocol\":%d,\"role\":\"worker\",\"index\":%d,\"pid\":%d}}\n",
                 PROTOCOL, my_index, (int)getpid());
        if (handshake(hello) < 0)
            _exit(1);
        worker_loop();
        _exit(0);
    }
    char result[48];
    snprintf(result, sizeof result, "{\"pid\":%d}", (int)pid);
    reply_ok(result);
}

static void op_dispatch(const struct request *rq) {
    const struct jval *l = get(rq, "listener"), *t = get(rq, "timeout");
    if (!master_only("dispatch"))
        return;
    if (!nworkers) {
        os_error(EINVAL, "dispatch: call create_socket() and open_channels() first");
        return;
    }
    if (!l || l->type != J_INT || !is_listener(l->i)) {
        os_error(EBADF, "dispatch: the listener is not open in the master");
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
    struct pollfd p = {.fd = (int)l->i, .events = POLLIN};
    for (;;) {
        int r = poll(&p, 1, remaining_ms(deadline));
        if (r > 0)
            break;
        if (r == 0) {
            reply_error("TimeoutError", ETIMEDOUT, "dispatch: no connection within %gs",
                        t ? t->f : 0.0);
            return;
        }
        if (errno != EINTR) {
            os_error(errno, "dispatch: poll() on the listener failed");
            return;
        }
    }
    int conn;
    do
        conn = accept4((int)l->i, NULL, NULL, SOCK_CLOEXEC);
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
            reply_int(i);
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
            continue;
        }
        close(conn);
        os_error(err, "dispatch: sendmsg to worker %d failed", i);
        return;
    }
}

static void op_enter_worker(const struct request *rq) {
    const struct jval *index = get(rq, "index");
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
    if (!is_worker) {
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
    reply_ok("null");
}

static void op_accept(void) {
    if (chan < 0) {
        os_error(EINVAL, "accept: call enter_worker() first%s", is_worker ? "" : " (this is "
                 "the master)");
        return;
    }
    if (!token_out)
        token_out = post_token(my_index);
    struct pollfd p[2] = {{.fd = chan, .events = POLLIN}, {.fd = ctl, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            os_error(errno, "accept: poll() failed");
            return;
        }
        if (p[1].revents) { /* the adapter went away while we wait: so do we */
            char c;
            if (recv(ctl, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0)
                _exit(0);
        }
        if (p[0].revents)
            break;
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
    if (nfds != 1 || nheld == MAX_HELD) {
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
    held[nheld++] = fds[0];
    reply_fd(fds[0]);
}

static void op_release(const struct request *rq) {
    const struct jval *fd = get(rq, "fd");
    if (!want_int("release", "fd", fd))
        return;
    int *list = is_worker ? held : listeners, *count = is_worker ? &nheld : &nlisteners;
    for (int k = 0; k < *count; k++)
        if (list[k] == fd->i) {
            close(list[k]);
            list[k] = list[--*count];
            if (chan >= 0 && !nheld && !token_out) /* done with its connection: idle again */
                token_out = post_token(my_index);
            reply_ok("null");
            return;
        }
    os_error(EBADF, "release: fd %lld was not handed out by this process", fd->i);
}

static void op_close(void) {
    close_listeners();
    close_channels();
    close_fd(&chan);
    while (nheld)
        close(held[--nheld]);
    if (is_worker)
        qid = -1; /* a worker never removes or changes the master's queue */
    else
        remove_queue();
    reply_ok("null");
}

static void handle(const char *line) {
    struct request rq;
    if (parse_object(line, &rq) < 0) {
        reply_error("ValueError", 0, "not a JSON object: %.60s", line);
        return;
    }
    const struct jval *op = get(&rq, "op");
    const char *name = op && op->type == J_STRING ? op->s : "";
    if (!strcmp(name, "is_supported"))
        reply_ok("true");
    else if (!strcmp(name, "create_socket"))
        op_create_socket(&rq);
    else if (!strcmp(name, "open_channels"))
        op_open_channels(&rq);
    else if (!strcmp(name, "fork_worker"))
        op_fork_worker(&rq);
    else if (!strcmp(name, "dispatch"))
        op_dispatch(&rq);
    else if (!strcmp(name, "enter_worker"))
        op_enter_worker(&rq);
    else if (!strcmp(name, "accept"))
        op_accept();
    else if (!strcmp(name, "release"))
        op_release(&rq);
    else if (!strcmp(name, "close"))
        op_close();
    else
        reply_error("ValueError", 0, "unknown op \"%.40s\"", name);
}

static void worker_loop(void) {
    char *line;
    while ((line = read_line()))
        handle(line);
}

int main(void) {
    char hello[256];
    owner = getpid();
    if ((ctl = connect_adapter()) < 0)
        return 2;
    snprintf(hello, sizeof hello,
             "{\"hello\":{\"protocol\":%d,\"role\":\"master\",\"pid\":%d,\"language\":\"c\","
             "\"name\":\"c-masterproxy\",\"capabilities\":[\"fd-passing\"]}}\n",
             PROTOCOL, (int)owner);
    if (handshake(hello) < 0) {
        fprintf(stderr, "masterproxy: the adapter refused the hello\n");
        return 2;
    }
    char *line;
#ifdef EXIT_ON_REQUEST
    int requests = 0;
#endif
    while ((line = read_line())) {
        while (waitpid(-1, NULL, WNOHANG) > 0) /* reap workers that ended */
            ;
#ifdef EXIT_ON_REQUEST
        if (++requests == EXIT_ON_REQUEST) {
            fprintf(stderr, "masterproxy: exiting on request %d as compiled\n", requests);
            return 3;
        }
#endif
        handle(line);
    }
    return 0; /* the adapter closed the connection: we are done */
}
