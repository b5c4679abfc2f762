/*
 * fdpass_adapter.c: the fdpass adapter protocol 2 for a C proxy; see fdpass_adapter.h
 * for the interface and docs/adapter.md for the protocol.
 */
#define _GNU_SOURCE
#include "fdpass_adapter.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_LINE 65536
#define MAX_FIELDS 16
#define MAX_HANDED 64

/* ---- a JSON reader for the flat request objects of the protocol ---------- */


struct field {
    char key[32];
    struct fdpass_value v;
};

struct fdpass_request {
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

static const char *parse_value(const char *p, struct fdpass_value *v) {
    memset(v, 0, sizeof *v);
    if (*p == '"') {
        v->type = FDPASS_STRING;
        return parse_string(p, v->s, sizeof v->s);
    }
    if (*p == '{' || *p == '[') {
        v->type = FDPASS_OTHER;
        return skip_nested(p);
    }
    if (!strncmp(p, "true", 4) || !strncmp(p, "false", 5)) {
        v->type = FDPASS_BOOL;
        v->i = *p == 't';
        return p + (*p == 't' ? 4 : 5);
    }
    if (!strncmp(p, "null", 4)) {
        v->type = FDPASS_NULL;
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
        v->type = FDPASS_FLOAT;
        return p;
    }
    v->type = FDPASS_INT;
    errno = 0;
    v->i = strtoll(num, NULL, 10);
    v->big = errno == ERANGE || (size_t)(p - start) >= sizeof num - 1;
    return p;
}

/* A flat JSON object into rq; -1 if it is not one. */
static int parse_object(const char *line, struct fdpass_request *rq) {
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

const struct fdpass_value *fdpass_arg(const struct fdpass_request *rq, const char *key) {
    for (int k = 0; k < rq->n; k++)
        if (!strcmp(rq->f[k].key, key))
            return &rq->f[k].v;
    return NULL;
}

const char *fdpass_type_name(const struct fdpass_value *v) {
    static const char *names[] = {"nothing", "null", "bool", "int", "float", "str", "object"};
    return v ? names[v->type] : names[0];
}

/* ---- the control connection ---------------------------------------------- */

int fdpass_want_int(const char *op, const char *name, const struct fdpass_value *v) {
    if (v && v->type == FDPASS_INT)
        return 1;
    fdpass_reply_error("TypeError", 0, "%s: %s must be an int, got %s", op, name,
                       fdpass_type_name(v));
    return 0;
}

/* ---- the control connection ---------------------------------------------- */

static const struct fdpass_proxy *proxy;
static int ctl = -1;
static char inbuf[MAX_LINE];
static size_t inlen;
static int worker_index = -1;
static int replied; /* the current request got its reply */
/* fds handed out on this process's connection and not released; in a worker, also the
 * master's listeners it inherited (reachable by a shared-listener accept) */
static int handed[MAX_HANDED], nhanded;
static int inherited[MAX_HANDED], ninherited;

int fdpass_worker_index(void) { return worker_index; }

static int connect_adapter(void) {
    const char *path = getenv("FDPASS_ADAPTER_SOCKET");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (!path || strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "%s: FDPASS_ADAPTER_SOCKET is not set (run me through the fdpass "
                        "adapter: pytest --fdpass-impl=exec:...)\n", proxy->name);
        return -1;
    }
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "%s: connect(%s) failed: %s\n", proxy->name, path, strerror(errno));
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
    replied = 1;
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

void fdpass_reply_null(void) { reply_ok("null"); }

void fdpass_reply_bool(int value) { reply_ok(value ? "true" : "false"); }

void fdpass_reply_int(long long value) {
    char text[32];
    snprintf(text, sizeof text, "%lld", value);
    reply_ok(text);
}

void fdpass_reply_fd(int fd) {
    char line[128];
    if (nhanded == MAX_HANDED) {
        fdpass_reply_error("internal", 0, "more than %d sockets handed out at once", MAX_HANDED);
        return;
    }
    handed[nhanded++] = fd;
    snprintf(line, sizeof line, "{\"ok\":true,\"result\":{\"fd\":%d}}\n", fd);
    send_line(line, fd);
}

static void vreply_error(const char *kind, int err, const char *suffix, const char *fmt,
                         va_list ap) {
    char message[512], escaped[1024], line[1280];
    int n = vsnprintf(message, sizeof message, fmt, ap);
    if (suffix && n >= 0 && (size_t)n < sizeof message)
        snprintf(message + n, sizeof message - (size_t)n, ": %s", suffix);
    json_escape(escaped, sizeof escaped, message);
#ifdef BROKEN_NO_ERRNO /* the toolkit's own test: a program whose errors carry no errno */
    err = 0;
#endif
    if (err) /* no errno: the member is omitted, never null */
        snprintf(line, sizeof line,
                 "{\"ok\":false,\"error\":\"%s\",\"errno\":%d,\"message\":\"%s\"}\n", kind, err,
                 escaped);
    else
        snprintf(line, sizeof line, "{\"ok\":false,\"error\":\"%s\",\"message\":\"%s\"}\n", kind,
                 escaped);
    send_line(line, -1);
}

void fdpass_reply_error(const char *kind, int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreply_error(kind, err, NULL, fmt, ap);
    va_end(ap);
}

void fdpass_os_error(int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreply_error("OSError", err, strerror(err), fmt, ap);
    va_end(ap);
}

int fdpass_wait_readable(int fd, int timeout_ms) {
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = ctl, .events = POLLIN}};
    nfds_t n = 2;
    for (;;) {
        int r = poll(p, n, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue; /* (a deadline is the caller's to recompute; EINTR is rare) */
        if (r <= 0)
            return r;
        if (n == 2 && p[1].revents) {
            char c;
            if (recv(ctl, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0)
                _exit(0); /* the adapter went away while we wait: so do we */
            n = 1;        /* data mid-request breaks the protocol: don't spin on it */
        }
        if (p[0].revents)
            return 1;
    }
}

/* ---- the request loop ------------------------------------------------------- */

static int hello(const char *text) {
    struct fdpass_request rq;
    send_line(text, -1);
    char *line = read_line();
    if (!line || parse_object(line, &rq) < 0)
        return -1;
    const struct fdpass_value *ok = fdpass_arg(&rq, "ok");
    if (ok && ok->type == FDPASS_BOOL && ok->i)
        return 0;
    const struct fdpass_value *msg = fdpass_arg(&rq, "message");
    fprintf(stderr, "%s: the adapter refused the hello: %s\n", proxy->name,
            msg && msg->type == FDPASS_STRING ? msg->s : "no reply");
    return -1;
}

static int find(const int *list, int n, long long fd) {
    for (int k = 0; k < n; k++)
        if (list[k] == fd)
            return k;
    return -1;
}

static void give_back(int k) {
    int fd = handed[k];
    handed[k] = handed[--nhanded];
    if (proxy->release)
        proxy->release(fd);
    else
        close(fd);
}

static void serve(void);

static void fork_worker(const struct fdpass_request *rq) {
    const struct fdpass_value *index = fdpass_arg(rq, "index");
    if (!fdpass_want_int("fork_worker", "index", index))
        return;
    if (worker_index >= 0 || index->big || index->i < 0) {
        fdpass_reply_error("ValueError", 0, "fork_worker: an index >= 0, in the master only");
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fdpass_os_error(errno, "fork_worker: fork() failed");
        return;
    }
    if (pid > 0) {
        char result[48];
        snprintf(result, sizeof result, "{\"pid\":%d}", (int)pid);
        reply_ok(result);
        return;
    }
    /* The new worker: the master's connection is the master's alone. Its listeners
     * stay reachable for a shared-listener accept; the proxy drops what it must in
     * enter_worker. */
    char text[160];
    close(ctl);
    inlen = 0;
    worker_index = (int)index->i;
    memcpy(inherited, handed, sizeof handed);
    ninherited = nhanded;
    nhanded = 0;
    if ((ctl = connect_adapter()) < 0)
        _exit(1);
    snprintf(text, sizeof text,
             "{\"hello\":{\"protocol\":%d,\"role\":\"worker\",\"index\":%d,\"pid\":%d}}\n",
             FDPASS_PROTOCOL, worker_index, (int)getpid());
    if (hello(text) < 0)
        _exit(1);
    serve();
    _exit(0);
}

/* The fd a request's "listener" names: -2 after an EBADF reply. null, or an fd this
 * process did not hand out, is EBADF, except for an fd-passing worker's accept (-1). */
static int listener(const struct fdpass_request *rq, const char *op) {
    const struct fdpass_value *l = fdpass_arg(rq, "listener");
    int fd = -1;
    if (l && l->type == FDPASS_INT && !l->big) {
        int k = find(handed, nhanded, l->i);
        if (k >= 0)
            fd = handed[k];
        else if ((k = find(inherited, ninherited, l->i)) >= 0)
            fd = inherited[k];
    }
    int fd_passing = !strcmp(proxy->capability, "fd-passing");
    if (fd < 0 && (!strcmp(op, "dispatch") || !fd_passing)) {
        fdpass_os_error(EBADF, "%s: the listener is not an fd this process holds", op);
        return -2;
    }
    return fd;
}

static void release(const struct fdpass_request *rq) {
    const struct fdpass_value *fd = fdpass_arg(rq, "fd");
    if (!fdpass_want_int("release", "fd", fd))
        return;
    int k = fd->big ? -1 : find(handed, nhanded, fd->i);
    if (k < 0) {
        fdpass_os_error(EBADF, "release: fd %lld was not handed out by this process", fd->i);
        return;
    }
    give_back(k);
    fdpass_reply_null();
}

static void handle(const char *line) {
    struct fdpass_request rq;
    if (parse_object(line, &rq) < 0) {
        fdpass_reply_error("ValueError", 0, "not a JSON object: %.60s", line);
        return;
    }
    const struct fdpass_value *opv = fdpass_arg(&rq, "op");
    const char *op = opv && opv->type == FDPASS_STRING ? opv->s : "";
    void (*plain)(const struct fdpass_request *) = NULL;
    void (*with_listener)(const struct fdpass_request *, int) = NULL;
    if (worker_index < 0 && proxy->before_request)
        proxy->before_request(op);
    replied = 0;
    if (!strcmp(op, "fork_worker")) {
        fork_worker(&rq);
        return;
    } else if (!strcmp(op, "release")) {
        release(&rq);
        return;
    } else if (!strcmp(op, "is_supported")) {
        plain = proxy->is_supported;
    } else if (!strcmp(op, "create_socket")) {
        plain = proxy->create_socket;
    } else if (!strcmp(op, "open_channels")) {
        plain = proxy->open_channels;
    } else if (!strcmp(op, "enter_worker")) {
        plain = proxy->enter_worker;
    } else if (!strcmp(op, "close")) {
        if (worker_index >= 0) /* a worker's connections are the adapter's to close */
            while (nhanded)
                give_back(nhanded - 1);
        plain = proxy->close;
    } else if (!strcmp(op, "dispatch")) {
        with_listener = proxy->dispatch;
    } else if (!strcmp(op, "accept")) {
        with_listener = proxy->accept;
    } else {
        fdpass_reply_error("unsupported", 0, "unknown op \"%.40s\"", op);
        return;
    }
    if (!plain && !with_listener) {
        fdpass_reply_error("unsupported", 0, "%s has no %s handler", proxy->name, op);
        return;
    }
    if (plain) {
        plain(&rq);
    } else {
        int fd = listener(&rq, op);
        if (fd == -2)
            return;
        with_listener(&rq, fd);
    }
    if (!strcmp(op, "close"))
        nhanded = ninherited = 0; /* listeners are the proxy's: its close closed them */
    if (!replied)
        fdpass_reply_error("internal", 0, "%s: the %s handler sent no reply", proxy->name, op);
}

static void serve(void) {
    char *line;
    while ((line = read_line())) {
#ifndef BROKEN_NO_REAP /* the toolkit's own test: a master that never reaps (SP-21) */
        if (worker_index < 0)
            while (waitpid(-1, NULL, WNOHANG) > 0) /* the master reaps its workers */
                ;
#endif
        handle(line);
    }
}

int fdpass_run(const struct fdpass_proxy *p) {
    char text[320];
    proxy = p;
    if ((ctl = connect_adapter()) < 0)
        return 2;
    snprintf(text, sizeof text,
             "{\"hello\":{\"protocol\":%d,\"role\":\"master\",\"pid\":%d,\"language\":\"c\","
             "\"name\":\"%.100s\",\"capabilities\":[\"%.40s\"]}}\n",
             FDPASS_PROTOCOL, (int)getpid(), p->name, p->capability);
    if (hello(text) < 0)
        return 2;
    serve();
    return 0; /* the adapter closed the connection: we are done */
}
