/*
 * ts_env.c - test lifecycle: required environment, scratch dir, unique names,
 * library-owned memory, cleanup at exit (also on signals), failure reporting,
 * polling and small file helpers.
 */
#define _GNU_SOURCE 1 /* memmem, strcasestr */
#include "ts_internal.h"

#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

static char g_name[64];
static char g_tmp[512];
static int64_t g_start_ms;
static bool g_inited;
static bool g_finished;

/* Library-owned allocations, freed by ts_finish. */
static void **g_kept;
static size_t g_nkept, g_capkept;

/* Cleanup callbacks, run in reverse order. */
struct cleanup { void (*fn)(void *); void *arg; };
static struct cleanup g_cleanups[256];
static size_t g_ncleanups;

void *ts_keep(void *p)
{
    if (!p)
        return NULL;
    if (g_nkept == g_capkept) {
        size_t cap = g_capkept ? g_capkept * 2 : 256;
        void **n = realloc(g_kept, cap * sizeof *n);
        if (!n) {
            fprintf(stderr, "ts: out of memory\n");
            abort();
        }
        g_kept = n;
        g_capkept = cap;
    }
    g_kept[g_nkept++] = p;
    return p;
}

void ts_forget(void *p)
{
    for (size_t i = g_nkept; i-- > 0;) {
        if (g_kept[i] == p) {
            g_kept[i] = g_kept[--g_nkept];
            return;
        }
    }
}

static void free_kept(void)
{
    for (size_t i = 0; i < g_nkept; i++)
        free(g_kept[i]);
    free(g_kept);
    g_kept = NULL;
    g_nkept = g_capkept = 0;
}

void ts_on_cleanup(void (*fn)(void *), void *arg)
{
    if (g_ncleanups < sizeof g_cleanups / sizeof g_cleanups[0])
        g_cleanups[g_ncleanups++] = (struct cleanup){ fn, arg };
}

static void run_cleanups(void)
{
    while (g_ncleanups > 0) {
        struct cleanup c = g_cleanups[--g_ncleanups];
        c.fn(c.arg);
    }
}

int64_t ts_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ts_sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

void ts_log(const char *fmt, ...)
{
    va_list ap;
    int64_t t = g_start_ms ? ts_now_ms() - g_start_ms : 0;
    fprintf(stderr, "[%s +%lld.%03llds] ", g_name[0] ? g_name : "ts",
            (long long)(t / 1000), (long long)(t % 1000));
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

void ts_fail(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ts_log("FAIL: %s", msg);
    /* Inside a test this longjmps back to cmocka; outside it exits. */
    fail_msg("%s", msg);
    exit(1);
}

char *ts_str(const char *fmt, ...)
{
    va_list ap, ap2;
    int n;
    char *s;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    s = malloc((size_t)n + 1);
    if (!s)
        abort();
    vsnprintf(s, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return ts_keep(s);
}

char *ts_json(const char *fmt, ...)
{
    va_list ap, ap2;
    int n;
    char *s;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    s = malloc((size_t)n + 1);
    if (!s)
        abort();
    vsnprintf(s, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    return ts_keep(s);
}

const char *ts_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr,
                "%s: required environment variable %s is not set.\n"
                "Run the integration tests through infra/testenv: infra/testenv run -- ctest ...\n",
                g_name[0] ? g_name : "test", name);
        exit(1);
    }
    return v;
}

const char *ts_test_name(void) { return g_name; }
const char *ts_tmp(void) { return g_tmp; }

const char *ts_unique(const char *suffix)
{
    char *s = ts_str("t_%s_%ld%s%s", g_name, (long)getpid(), suffix && *suffix ? "_" : "",
                     suffix ? suffix : "");
    for (char *p = s; *p; p++) {
        *p = (char)tolower((unsigned char)*p);
        if (!isalnum((unsigned char)*p) && *p != '_')
            *p = '_';
    }
    return s;
}

bool ts_wait_until(bool (*fn)(void *arg), void *arg, int timeout_ms)
{
    int64_t deadline = ts_now_ms() + timeout_ms;
    for (;;) {
        if (fn(arg))
            return true;
        if (ts_now_ms() >= deadline)
            return false;
        ts_sleep_ms(50);
    }
}

static int free_port_kernel(void)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int port = -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

int ts_free_port(void)
{
    /* infra/free-port reserves the port for a while, so parallel tests don't
     * get the same one; fall back to the kernel if the script is missing. */
    const char *script = ts_str("%s/free-port", ts_infra_dir());
    if (access(script, X_OK) == 0) {
        char *out = NULL;
        char *argv[] = { (char *)script, NULL };
        if (ts_run(argv, 10000, &out) == 0 && out) {
            int port = atoi(out);
            if (port > 0 && port < 65536)
                return port;
        }
        ts_log("infra/free-port failed (%s); asking the kernel", out ? out : "");
    }
    int port = free_port_kernel();
    if (port <= 0)
        ts_fail("cannot find a free port");
    return port;
}

const char *ts_infra_dir(void)
{
    const char *o = getenv("STAMPCP_TEST_INFRA_DIR");
    if (o && *o)
        return o;
    return ts_str("%s/infra", ts_env("STAMPCP_SOURCE_DIR"));
}

char *ts_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (!f)
        return NULL;
    for (;;) {
        if (cap - n < 4096) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                abort();
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return ts_keep(buf);
}

void ts_write_file(const char *path, const char *content)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        ts_fail("cannot write %s: %s", path, strerror(errno));
    fputs(content, f);
    if (fclose(f) != 0)
        ts_fail("cannot write %s: %s", path, strerror(errno));
}

bool ts_file_contains(const char *path, const char *needle)
{
    size_t len;
    char *s = ts_read_file(path, &len);
    bool found;
    if (!s)
        return false;
    /* memmem: logs may contain NUL bytes */
    found = memmem(s, len, needle, strlen(needle)) != NULL;
    ts_forget(s);
    free(s);
    return found;
}

static void rm_rf(const char *dir)
{
    char *argv[] = { "rm", "-rf", "--", (char *)dir, NULL };
    char *rm = "/bin/rm";
    argv[0] = rm;
    (void)ts_run(argv, 60000, NULL);
}

/* Emergency path: exit() without ts_finish (a failing helper outside a test), or a signal. */
static void atexit_cleanup(void)
{
    if (g_finished)
        return;
    g_finished = true;
    ts_procs_kill_all(SIGKILL);
    run_cleanups();
    free_kept();
}

static void on_signal(int sig)
{
    /* Best effort: kill the children so nothing outlives an interrupted run. */
    ts_procs_kill_all(SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

void ts_init(const char *test_name)
{
    const char *tmp;

    snprintf(g_name, sizeof g_name, "%s", test_name);
    g_start_ms = ts_now_ms();
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);

    /* Fail loudly (never skip) when run outside infra/testenv. */
    (void)ts_env("STAMPCP_SOURCE_DIR");
    (void)ts_env("STAMPCP_BIN_DIR");
    (void)ts_env("STAMPCP_TEST_PG");
    (void)ts_env("STAMPCP_TEST_REDIS");
    tmp = ts_env("STAMPCP_TEST_TMP");

    snprintf(g_tmp, sizeof g_tmp, "%s/%s_%ld", tmp, test_name, (long)getpid());
    if (mkdir(g_tmp, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "%s: cannot create %s: %s\n", test_name, g_tmp, strerror(errno));
        exit(1);
    }
    /* PostgreSQL runs as user postgres and must be able to use dirs under it. */
    chmod(g_tmp, 0777);

    atexit(atexit_cleanup);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGHUP, on_signal);
    g_inited = true;
    ts_log("scratch dir %s", g_tmp);
}

int ts_finish(int failed)
{
    int sanitizer = 0;

    if (!g_inited)
        return 1;
    /* Give the daemons a clean stop so ASan/LSan get to report. */
    ts_procs_stop_all(5000);
    sanitizer = ts_procs_scan_sanitizer();
    if (failed || sanitizer)
        ts_procs_dump_all(6000);
    g_finished = true;
    run_cleanups();
    if (!failed && !sanitizer) {
        rm_rf(g_tmp);
    } else {
        ts_log("keeping scratch dir %s for inspection", g_tmp);
    }
    ts_procs_free_all();
    ts_http_free_all();
    free_kept();
    if (sanitizer)
        fprintf(stderr, "%s: a daemon reported sanitizer errors (see the log above)\n", g_name);
    fprintf(stderr, "%s: %s\n", g_name, failed || sanitizer ? "FAILED" : "passed");
    return failed || sanitizer ? 1 : 0;
}
