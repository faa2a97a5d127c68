/*
 * ts_proc.c - start, signal, wait for and reap child processes; every one is
 * registered so nothing a test started outlives it.
 */
#include "ts_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_PROCS 128

static struct ts_proc *g_procs[MAX_PROCS];
static size_t g_nprocs;

static void child_exec(char *const argv[], const char *log_path, const char *err_path)
{
    int fd, efd;
    /* Die with the test, even when ctest SIGKILLs it on timeout. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    setpgid(0, 0);
    signal(SIGPIPE, SIG_DFL);
    fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0666);
    if (fd < 0)
        _exit(126);
    efd = err_path ? open(err_path, O_WRONLY | O_CREAT | O_APPEND, 0666) : fd;
    if (efd < 0)
        _exit(126);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0)
        dup2(devnull, 0);
    dup2(fd, 1);
    dup2(efd, 2);
    execv(argv[0], argv);
    dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

struct ts_proc *ts_proc_spawn(const char *name, char *const argv[],
                              const char *log_path, const char *err_path)
{
    struct ts_proc *p = calloc(1, sizeof *p);
    pid_t pid;

    if (!p)
        abort();
    if (g_nprocs == MAX_PROCS)
        ts_fail("too many processes");
    snprintf(p->name, sizeof p->name, "%s", name);
    if (log_path)
        snprintf(p->log_path, sizeof p->log_path, "%s", log_path);
    else
        snprintf(p->log_path, sizeof p->log_path, "%s/%s.log", ts_tmp(), name);
    if (err_path)
        snprintf(p->err_path, sizeof p->err_path, "%s", err_path);

    {
        FILE *f = fopen(p->log_path, "a");
        if (f) {
            fprintf(f, "---- ts: starting %s:", name);
            for (char *const *a = argv; *a; a++)
                fprintf(f, " %s", *a);
            fprintf(f, "\n");
            fclose(f);
        }
    }
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0)
        ts_fail("fork: %s", strerror(errno));
    if (pid == 0)
        child_exec(argv, p->log_path, err_path);
    p->pid = pid;
    g_procs[g_nprocs++] = p;
    ts_log("started %s pid %ld (log %s)", name, (long)pid, p->log_path);
    return p;
}

static void reap(struct ts_proc *p, bool block)
{
    int st;
    pid_t r;
    if (p->reaped)
        return;
    do {
        r = waitpid(p->pid, &st, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == p->pid) {
        p->reaped = true;
        p->wstatus = st;
    } else if (r < 0 && errno == ECHILD) {
        p->reaped = true;
        p->wstatus = 0;
    }
}

bool ts_proc_alive(struct ts_proc *p)
{
    reap(p, false);
    return !p->reaped;
}

void ts_proc_kill(struct ts_proc *p, int sig)
{
    reap(p, false);
    if (!p->reaped)
        kill(p->pid, sig);
}

bool ts_proc_wait(struct ts_proc *p, int timeout_ms)
{
    int64_t deadline = ts_now_ms() + timeout_ms;
    for (;;) {
        reap(p, false);
        if (p->reaped)
            return true;
        if (ts_now_ms() >= deadline)
            return false;
        ts_sleep_ms(10);
    }
}

int ts_proc_exit_code(const struct ts_proc *p)
{
    if (!p->reaped || !WIFEXITED(p->wstatus))
        return -1;
    return WEXITSTATUS(p->wstatus);
}

int ts_proc_term_signal(const struct ts_proc *p)
{
    if (!p->reaped || !WIFSIGNALED(p->wstatus))
        return 0;
    return WTERMSIG(p->wstatus);
}

static void dump_file(const char *label, const char *path, size_t max_bytes)
{
    size_t len;
    char *s = ts_read_file(path, &len);
    const char *start;
    if (!s) {
        fprintf(stderr, "---- %s: (no log at %s)\n", label, path);
        return;
    }
    start = len > max_bytes ? s + len - max_bytes : s;
    fprintf(stderr, "---- %s: last %zu bytes of %s ----\n", label, (size_t)(s + len - start), path);
    fwrite(start, 1, (size_t)(s + len - start), stderr);
    fprintf(stderr, "\n---- end of %s ----\n", label);
    ts_forget(s);
    free(s);
}

void ts_proc_dump_log(const struct ts_proc *p, size_t max_bytes)
{
    dump_file(p->name, p->log_path, max_bytes);
    if (p->err_path[0])
        dump_file(p->name, p->err_path, max_bytes);
}

bool ts_proc_log_contains(const struct ts_proc *p, const char *needle)
{
    return ts_file_contains(p->log_path, needle) ||
           (p->err_path[0] && ts_file_contains(p->err_path, needle));
}

int ts_run(char *const argv[], int timeout_ms, char **output)
{
    char path[600];
    static int seq;
    struct ts_proc p;
    pid_t pid;
    int64_t deadline = ts_now_ms() + timeout_ms;

    snprintf(path, sizeof path, "%s/run-%ld-%d.out", ts_tmp()[0] ? ts_tmp() : "/tmp",
             (long)getpid(), seq++);
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0)
        ts_fail("fork: %s", strerror(errno));
    if (pid == 0)
        child_exec(argv, path, NULL);
    memset(&p, 0, sizeof p);
    p.pid = pid;
    /* Register while it runs so an interrupted test still kills it. */
    g_procs[g_nprocs++] = &p;
    for (;;) {
        reap(&p, false);
        if (p.reaped || ts_now_ms() >= deadline)
            break;
        ts_sleep_ms(10);
    }
    if (!p.reaped) {
        kill(-p.pid, SIGKILL);
        kill(p.pid, SIGKILL);
        reap(&p, true);
        p.wstatus = -1;
    }
    g_nprocs--;
    if (output) {
        size_t len;
        *output = ts_read_file(path, &len);
    }
    unlink(path);
    if (p.wstatus == -1 || !WIFEXITED(p.wstatus))
        return -1;
    return WEXITSTATUS(p.wstatus);
}

void ts_procs_kill_all(int sig)
{
    for (size_t i = 0; i < g_nprocs; i++)
        if (!g_procs[i]->reaped)
            kill(g_procs[i]->pid, sig);
}

void ts_procs_stop_all(int timeout_ms)
{
    int64_t deadline = ts_now_ms() + timeout_ms;
    ts_procs_kill_all(SIGTERM);
    for (size_t i = 0; i < g_nprocs; i++) {
        int left = (int)(deadline - ts_now_ms());
        if (!ts_proc_wait(g_procs[i], left > 0 ? left : 0)) {
            ts_log("%s (pid %ld) ignored SIGTERM; killing it", g_procs[i]->name, (long)g_procs[i]->pid);
            kill(g_procs[i]->pid, SIGKILL);
            reap(g_procs[i], true);
        }
    }
}

static const char *const sanitizer_markers[] = {
    "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
    "WARNING: ThreadSanitizer", NULL,
};

int ts_procs_scan_sanitizer(void)
{
    int bad = 0;
    for (size_t i = 0; i < g_nprocs; i++) {
        for (const char *const *m = sanitizer_markers; *m; m++) {
            if (ts_proc_log_contains(g_procs[i], *m)) {
                ts_log("%s: log contains \"%s\"", g_procs[i]->name, *m);
                bad++;
                break;
            }
        }
    }
    return bad;
}

void ts_procs_dump_all(size_t max_bytes)
{
    for (size_t i = 0; i < g_nprocs; i++)
        ts_proc_dump_log(g_procs[i], max_bytes);
}

void ts_procs_free_all(void)
{
    for (size_t i = 0; i < g_nprocs; i++)
        free(g_procs[i]);
    g_nprocs = 0;
}

/* Occurrences in one file (0 if unreadable). The text is freed at once: a
 * test may count in a growing log many times. */
static int count_in_file(const char *path, const char *needle)
{
    size_t len = 0, nlen = strlen(needle);
    char *text = ts_read_file(path, &len);
    int n = 0;
    if (!text)
        return 0;
    for (const char *s = text; nlen && (s = strstr(s, needle)) != NULL; s += nlen)
        n++;
    ts_forget(text);
    free(text);
    return n;
}

int ts_proc_log_count(const struct ts_proc *p, const char *needle)
{
    return count_in_file(p->log_path, needle) + (p->err_path[0] ? count_in_file(p->err_path, needle) : 0);
}
