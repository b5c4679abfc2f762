/*
 * A proxy on the C kit that goes wrong on purpose, for tests/adapter/test_kits.py
 * (the PHP twin is kit_edge.php). create_socket(1) fails without an errno,
 * create_socket(2) hits a bug (its handler sends no reply), any other port gives a
 * listener; accept() blocks until a client comes; open_channels & co. are missing.
 * EDGE_CAP picks the capability; EDGE_MODE=die-between-calls makes is_supported()
 * schedule SIGALRM, whose default action kills the program one second later;
 * EDGE_MODE=close-bug makes close() in a worker hit a bug.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fdpass_adapter.h"

static int listeners[8], nlisteners;

static void is_supported(const struct fdpass_request *rq) {
    const char *mode = getenv("EDGE_MODE");
    (void)rq;
    if (mode && !strcmp(mode, "die-between-calls"))
        alarm(1);
    fdpass_reply_bool(1);
}

static void create_socket(const struct fdpass_request *rq) {
    const struct fdpass_value *port = fdpass_arg(rq, "port");
    if (!fdpass_want_int("create_socket", "port", port))
        return;
    if (port->i == 1) {
        fdpass_reply_error("OSError", 0, "create_socket: a failure the library gives no errno for");
        return;
    }
    if (port->i == 2 || nlisteners == 8)
        return; /* the bug: no reply */
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port->i)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 16) < 0) {
        int err = errno;
        close(s);
        fdpass_os_error(err, "create_socket: bind() or listen() failed");
        return;
    }
    listeners[nlisteners++] = s;
    fdpass_reply_fd(s);
}

static void accept_one(const struct fdpass_request *rq, int listener) {
    (void)rq;
    if (fdpass_wait_readable(listener, -1) < 0) {
        fdpass_os_error(errno, "accept: poll() failed");
        return;
    }
    int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) {
        fdpass_os_error(errno, "accept: accept() failed");
        return;
    }
    fdpass_reply_fd(conn);
}

static void release(int fd) {
    for (int k = 0; k < nlisteners; k++)
        if (listeners[k] == fd)
            listeners[k] = listeners[--nlisteners];
    close(fd);
}

static void close_all(const struct fdpass_request *rq) {
    const char *mode = getenv("EDGE_MODE");
    (void)rq;
    if (mode && !strcmp(mode, "close-bug") && fdpass_worker_index() >= 0)
        return; /* the bug: no reply */
    while (nlisteners)
        close(listeners[--nlisteners]);
    fdpass_reply_null();
}

int main(void) {
    const char *cap = getenv("EDGE_CAP");
    struct fdpass_proxy proxy = {
        .name = "c-kit-edge",
        .capability = cap && *cap ? cap : "shared-listener",
        .is_supported = is_supported,
        .create_socket = create_socket,
        .accept = accept_one,
        .close = close_all,
        .release = release,
    };
    return fdpass_run(&proxy);
}
