/*
 * bench/wrk_tls_shim.c — LD_PRELOAD shim for wrk: count full and resumed TLS handshakes and,
 * with WRK_NO_RESUME=1, stop wrk from resuming TLS sessions.
 *
 * wrk gives each of its connections one SSL object for the whole run. When a connection closes
 * (every request with `Connection: close`), wrk calls SSL_shutdown() and then SSL_clear() on it
 * and reconnects with the same object. After a clean shutdown SSL_clear() keeps the session
 * (under TLS 1.3 the last session ticket the server sent), so the next handshake offers it and
 * every server that issues tickets resumes: stock wrk measures resumed handshakes.
 *
 * WRK_NO_RESUME=1   drop the session before SSL_clear(), so that every reconnect is a full
 *                   handshake (certificate, signature, key exchange).
 * WRK_TLS_STATS=F   at exit, write "full N resumed M" (handshakes completed by SSL_connect,
 *                   resumed per SSL_session_reused) to the file F.
 *
 * bench/compare.sh builds it and preloads it into wrk for `tls_close` (WRK_NO_RESUME=1) and
 * `tls_resume` (counting only):
 *     cc -O2 -shared -fPIC -o wrk_tls_shim.so bench/wrk_tls_shim.c -ldl
 *     WRK_NO_RESUME=1 LD_PRELOAD=$PWD/wrk_tls_shim.so wrk -H 'Connection: close' https://...
 * It declares the OpenSSL functions it uses and finds them at run time (dlsym), so it needs no
 * OpenSSL headers.
 *
 * It also stops wrk from spinning during handshakes. wrk waits for a TLS handshake to finish by
 * registering the socket for readable AND writable events and calling SSL_connect() on each;
 * while the handshake waits for the server's reply the socket stays writable, so wrk calls
 * SSL_connect() → read() → EAGAIN in a busy loop, and the slower the server's handshake, the
 * more CPU wrk burns per handshake (under strace, which slows every step: ~47 EAGAIN reads per
 * connection against nginx, ~2 against portico; on a quiet machine the effect on the rate is
 * within noise, on a busy one it makes the client's cost depend on the server's latency).
 * When SSL_connect() wants to read, the shim narrows that socket's epoll registration to
 * EPOLLIN (it learns the epoll fd from wrk's epoll_ctl calls); wrk restores readable+writable
 * itself once the handshake is done.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

static long full_handshakes, resumed_handshakes;

int SSL_clear(SSL *s) {
    static int (*real_clear)(SSL *);
    static int (*set_session)(SSL *, SSL_SESSION *);
    static int drop = -1;
    if (real_clear == NULL) {
        real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
        set_session = (int (*)(SSL *, SSL_SESSION *))dlsym(RTLD_NEXT, "SSL_set_session");
        const char *v = getenv("WRK_NO_RESUME");
        drop = v != NULL && v[0] == '1';
    }
    if (drop && set_session != NULL) {
        set_session(s, NULL); /* forget the session: the next SSL_connect starts afresh */
    }
    return real_clear != NULL ? real_clear(s) : 0;
}

/* fd → (epoll fd + 1) it is registered with, 0 if none; wrk's fds are small numbers. */
#define MAX_FD 65536
static int epoll_of[MAX_FD];
static int (*real_epoll_ctl)(int, int, int, struct epoll_event *);

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event) {
    if (real_epoll_ctl == NULL) {
        real_epoll_ctl = (int (*)(int, int, int, struct epoll_event *))dlsym(RTLD_NEXT, "epoll_ctl");
    }
    if (fd >= 0 && fd < MAX_FD) {
        __atomic_store_n(&epoll_of[fd], op == EPOLL_CTL_DEL ? 0 : epfd + 1, __ATOMIC_RELAXED);
    }
    return real_epoll_ctl(epfd, op, fd, event);
}

static void wait_for(SSL *s, int (*get_fd)(const SSL *), unsigned events) {
    int fd = get_fd != NULL ? get_fd(s) : -1;
    int ep = fd >= 0 && fd < MAX_FD ? __atomic_load_n(&epoll_of[fd], __ATOMIC_RELAXED) - 1 : -1;
    if (ep < 0 || real_epoll_ctl == NULL) {
        return;
    }
    struct epoll_event ev = {0};
    ev.events = events;
    ev.data.fd = fd; /* as wrk's ae_epoll.c registers it */
    real_epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

int SSL_connect(SSL *s) {
    enum { SSL_ERROR_WANT_READ = 2 };
    static int (*real_connect)(SSL *);
    static int (*session_reused)(const SSL *);
    static int (*get_error)(const SSL *, int);
    static int (*get_fd)(const SSL *);
    if (real_connect == NULL) {
        real_connect = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
        session_reused = (int (*)(const SSL *))dlsym(RTLD_NEXT, "SSL_session_reused");
        get_error = (int (*)(const SSL *, int))dlsym(RTLD_NEXT, "SSL_get_error");
        get_fd = (int (*)(const SSL *))dlsym(RTLD_NEXT, "SSL_get_fd");
    }
    if (real_connect == NULL) {
        return -1;
    }
    int r = real_connect(s);
    if (r == 1) { /* handshake complete (wrk calls it again while it returns WANT_READ/WRITE) */
        if (session_reused != NULL && session_reused(s)) {
            __atomic_add_fetch(&resumed_handshakes, 1, __ATOMIC_RELAXED);
        } else {
            __atomic_add_fetch(&full_handshakes, 1, __ATOMIC_RELAXED);
        }
    } else if (get_error != NULL) {
        /* Waiting for the server: only readable wakes us. Anything else (WANT_WRITE): both. */
        wait_for(s, get_fd, get_error(s, r) == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLIN | EPOLLOUT);
    }
    return r;
}

__attribute__((destructor)) static void write_stats(void) {
    const char *path = getenv("WRK_TLS_STATS");
    FILE *f;
    if (path == NULL || path[0] == '\0' || (f = fopen(path, "w")) == NULL) {
        return;
    }
    fprintf(f, "full %ld resumed %ld\n", __atomic_load_n(&full_handshakes, __ATOMIC_RELAXED),
            __atomic_load_n(&resumed_handshakes, __ATOMIC_RELAXED));
    fclose(f);
}
