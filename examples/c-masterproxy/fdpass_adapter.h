/*
 * fdpass_adapter.h: the fdpass adapter protocol 2 (docs/adapter.md) for a C proxy.
 *
 * The kit does everything that is about the protocol and nothing about the proxy:
 * connecting to $FDPASS_ADAPTER_SOCKET, hello, the request loop, reading the flat
 * JSON requests, replies (sockets passed with SCM_RIGHTS), error replies, forking
 * workers and reaping them, the table of sockets handed out (release, and the fd a
 * request names as "listener"), and waiting on an fd and the control connection at
 * once, so that a process blocked for a connection still ends with the adapter.
 *
 *   static const struct fdpass_proxy proxy = {.name = "my-proxy", ...};
 *   int main(void) { return fdpass_run(&proxy); }
 *
 * Each handler sends exactly one reply (fdpass_reply_* or an error). A NULL handler
 * is answered with the error kind "unsupported" (the requirements that need the
 * method are then blocked or n/a). Handlers read their arguments with fdpass_arg();
 * validating them (types, ranges) is the proxy's job, as the contract says.
 */
#ifndef FDPASS_ADAPTER_H
#define FDPASS_ADAPTER_H

#define FDPASS_PROTOCOL 2

enum fdpass_type { FDPASS_ABSENT, FDPASS_NULL, FDPASS_BOOL, FDPASS_INT, FDPASS_FLOAT,
                   FDPASS_STRING, FDPASS_OTHER };

/* One argument of a request, as JSON gave it. */
struct fdpass_value {
    enum fdpass_type type;
    long long i; /* FDPASS_INT, FDPASS_BOOL */
    int big;     /* an FDPASS_INT that does not fit in a long long */
    double f;    /* FDPASS_FLOAT (and FDPASS_INT) */
    char s[256]; /* FDPASS_STRING, truncated */
};

struct fdpass_request;

/* The argument `name` of the request; NULL when it is absent. */
const struct fdpass_value *fdpass_arg(const struct fdpass_request *rq, const char *name);
/* "int", "str", "null", ... for messages; "nothing" for NULL. */
const char *fdpass_type_name(const struct fdpass_value *v);
/* 1 if v is an int; else replies TypeError ("op: name must be an int, got str") and
 * returns 0: the handler returns at once. */
int fdpass_want_int(const char *op, const char *name, const struct fdpass_value *v);

struct fdpass_proxy {
    const char *name;       /* in the report and test ids */
    const char *capability; /* "fd-passing" or "shared-listener" */
    void (*is_supported)(const struct fdpass_request *rq);
    void (*create_socket)(const struct fdpass_request *rq);  /* master: fdpass_reply_fd() */
    void (*open_channels)(const struct fdpass_request *rq);  /* master, fd-passing */
    void (*enter_worker)(const struct fdpass_request *rq);   /* worker, fd-passing */
    /* listener: the proxy's own fd, already checked to be one it handed out (the kit
     * answers EBADF otherwise). In an fd-passing worker's accept it may be -1. */
    void (*dispatch)(const struct fdpass_request *rq, int listener); /* fdpass_reply_int() */
    void (*accept)(const struct fdpass_request *rq, int listener);   /* fdpass_reply_fd() */
    void (*close)(const struct fdpass_request *rq);
    /* Optional. The adapter is done with fd (a listener or connection the proxy handed
     * out): forget it and close it. Default: close(fd). */
    void (*release)(int fd);
    /* Optional. Called in the master before each request (op is its name). */
    void (*before_request)(const char *op);
};

/* Connect, say hello, serve requests until the adapter closes the connection; the
 * exit status for main(). */
int fdpass_run(const struct fdpass_proxy *proxy);

/* -1 in the master; the worker's index in a worker the kit forked. */
int fdpass_worker_index(void);

/* Replies; a handler sends exactly one. */
void fdpass_reply_null(void);
void fdpass_reply_bool(int value);
void fdpass_reply_int(long long value);
/* A socket: the reply carries it (SCM_RIGHTS) and names fd. The proxy keeps fd open
 * until release (or close) for it; the kit records it as handed out. */
void fdpass_reply_fd(int fd);
/* kind: OSError, TimeoutError, EOFError, ValueError, TypeError, OverflowError,
 * IndexError, RuntimeError, internal (a bug in the program) or unsupported.
 * err 0: the reply has no errno. */
void fdpass_reply_error(const char *kind, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* OSError with err; the message is the formatted text, ": ", strerror(err). */
void fdpass_os_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Wait until fd is readable: 1; timeout_ms passed (-1: no limit): 0; poll() failed: -1
 * with errno. Meanwhile the control connection is watched: when the adapter closes it,
 * the process exits (status 0). */
int fdpass_wait_readable(int fd, int timeout_ms);

#endif
