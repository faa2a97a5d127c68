/*
 * pgpool.c - asynchronous PostgreSQL pool: per-connection state machine,
 * bounded wait queue, reconnect with backoff, migrations on first connect.
 *
 * Connection states (one transition function, conn_set_state):
 *
 *   DOWN --timer--> CONNECTING --PQconnectPoll OK--> SETUP (first conn of a
 *   pool that is not migrated yet) or IDLE;  SETUP --done--> IDLE;
 *   IDLE --job--> BUSY --result--> IDLE;  any --error/timeout--> DOWN.
 *   BUSY --statement deadline--> CANCELLING (the job has failed already, the
 *   backend is asked to cancel) --statement ended--> IDLE, or --grace--> DOWN.
 *
 * A server that can no longer serve this connection - read-only (25006, a
 * demoted primary), shutting down (57P01-57P03) - drops it: the reconnect
 * goes through the conninfo's host list again (target_session_attrs picks
 * the primary), and the statement fails as PGQ_UNAVAILABLE, not as SQL.
 *
 * While connected, the socket's read event stays armed even when IDLE, so a
 * database that goes away is noticed at once rather than by the next request.
 */
#include "pgpool.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "log.h"

#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
/* Every control plane takes this advisory lock while migrating, so two
 * processes starting at once apply each migration exactly once. */
#define PG_MIGRATION_LOCK 7273620001LL

/* Connection parameters pgpool adds to the conninfo (see pool_params). */
#define PG_MAX_PARAMS 12
/* While a statement runs, the backend polls its client socket this often
 * (PostgreSQL >= 14): a connection pgpool dropped stops holding locks then. */
#define PG_CLIENT_CHECK_MS 1000
/* Hosts of a multi-host conninfo pgpool resolves itself (more: libpq resolves them). */
#define PG_MAX_HOSTS 8
/* Cancel threads alive at once, in the whole process (see conn_cancel_start). */
#define PG_CANCEL_MAX_THREADS 16

enum pgc_state { PGC_DOWN, PGC_CONNECTING, PGC_SETUP, PGC_IDLE, PGC_BUSY, PGC_CANCELLING };
static const char *const pgc_state_names[] = {"down", "connecting", "setup", "idle", "busy", "cancelling"};

enum pool_setup { SETUP_NONE, SETUP_RUNNING, SETUP_DONE };

struct pgjob {
    TAILQ_ENTRY(pgjob) link;
    struct pgpool *pool;
    char *sql;
    int nparams;
    char **values;
    pgpool_cb cb;
    void *arg;
    struct event *timer;   /* queue deadline, or an immediate failure */
    bool queued;
    const char *fail_msg;  /* set before the timer is activated to fail it */
    int64_t deadline_ms;   /* the caller's deadline (pgpool_query_until), 0: none */
    bool timer_is_deadline;   /* the queue timer was cut to the deadline: its firing is the deadline
                               * (libevent's cached clock may fire it a little early) */
};
TAILQ_HEAD(pgjob_list, pgjob);

/* One host name of the conninfo being resolved for one connection attempt. */
struct pgresolve {
    struct pgconn *conn;
    int host;                  /* index into pool->hosts */
    struct dns_req *req;       /* pending, or NULL */
    char addr[DNS_ADDR_MAX];   /* the answer; "" while pending or when it failed */
};

struct pgconn {
    struct pgpool *pool;
    struct pgresolve resolve[PG_MAX_HOSTS];
    int resolving;             /* CONNECTING: host names still being resolved */
    int idx;
    PGconn *pg;
    enum pgc_state state;
    int fd;
    struct event *rd;      /* EV_READ|EV_PERSIST on fd while connected */
    struct event *wr;      /* one-shot EV_WRITE while connecting or flushing */
    struct event *timer;   /* backoff while DOWN, deadlines otherwise */
    int backoff_ms;
    int64_t connect_deadline;
    struct pgjob *job;     /* BUSY only */
    PGresult *res;         /* last good result of the statement in flight */
    PGresult *err;         /* first error result of the statement in flight */
    int setup_step;        /* SETUP: index of the migration in flight; == n: identity check;
                            * SETUP_PROBE: reading the applied versions; SETUP_VERIFY: this
                            * connection's own identity check (the pool is set up already) */
    bool setup_rollback;   /* SETUP: a ROLLBACK after an already-applied migration is in flight */
    bool verified;         /* geography pools: this connection's database passed the identity check */
    bool recycle;          /* its server was found read-only: drop it once its statement ends */
    struct pgcancel *cancel;   /* CANCELLING: the cancel request in flight (shared with its thread) */
    bool cancel_ended;     /* CANCELLING: the statement has ended, the cancel request not yet */
    int64_t cancel_deadline;   /* CANCELLING: mono ms when the grace period ends */
};

#define SETUP_PROBE  (-2)
#define SETUP_VERIFY (-3)
#define SETUP_IDENT_FIRST (-4)  /* geography_check_only: identity before any migration */

struct pgpool {
    struct event_base *base;
    char *name;
    char *conninfo;
    char *geography;
    bool geography_check_only;
    void (*on_wrong_geography)(void *arg, bool ever_ready);
    void *cb_arg;
    bool *applied;             /* per migration: found in the migrations table by the probe */
    char *probe_sql;
    int size;
    int connect_timeout_ms, query_timeout_ms, queue_timeout_ms, max_queue, cancel_grace_ms;
    /* PQconnectStartParams arguments: pgpool's defaults, the conninfo, then the
     * server options (NULL-terminated); param_own holds the strings we made. */
    const char *param_kw[PG_MAX_PARAMS + 1];
    const char *param_val[PG_MAX_PARAMS + 1];
    char *param_own[PG_MAX_PARAMS];
    int n_params;
    /* The conninfo asks for a writable server (target_session_attrs
     * read-write or primary): a connection whose server turns read-only is
     * replaced (see conn_check_role). */
    bool want_primary;
    /* Host list of the conninfo when pgpool resolves it (n_hosts > 0): each
     * entry, its port ("" : the conninfo's single port) and whether it is a
     * name to resolve (not numeric, not a unix socket directory). */
    struct dns *dns;
    int n_hosts;
    char *hosts[PG_MAX_HOSTS];
    char *ports[PG_MAX_HOSTS];
    bool by_name[PG_MAX_HOSTS];
    const struct migration *migrations;
    int n_migrations;
    char **migration_sql;
    struct pgconn *conns;
    struct pgjob_list queue;
    int queue_len;
    enum pool_setup setup;
    const char *setup_error;   /* last setup failure word, NULL if none */
    bool ever_ready;
};

static void conn_start(struct pgconn *c);
static void conn_broken(struct pgconn *c, const char *why);
static void pool_dispatch(struct pgpool *p);
static void pool_maybe_setup(struct pgpool *p);
static void setup_next(struct pgconn *c);
static void conn_verify(struct pgconn *c);

/* ---- jobs ---- */

static void job_free(struct pgjob *j)
{
    event_free(j->timer);
    free(j->sql);
    for (int i = 0; i < j->nparams; i++)
        free(j->values[i]);
    free(j->values);
    free(j);
}

static void job_finish(struct pgjob *j, const struct pgq_result *r)
{
    j->cb(r, j->arg);
    job_free(j);
}

/* unsent: the statement never reached the server; expired: because the
 * caller's deadline passed (implies unsent). */
static void job_finish_unavailable(struct pgjob *j, const char *why, bool unsent, bool expired)
{
    struct pgq_result r = {.status = PGQ_UNAVAILABLE, .message = why, .unsent = unsent, .expired = expired};
    job_finish(j, &r);
}

bool pgq_in_doubt(const struct pgq_result *q)
{
    return q->status == PGQ_UNAVAILABLE && !q->unsent && !q->sqlstate;
}

static void job_dequeue(struct pgjob *j)
{
    if (j->queued) {
        TAILQ_REMOVE(&j->pool->queue, j, link);
        j->pool->queue_len--;
        j->queued = false;
    }
}

/* The job's timer: its queue deadline passed, or it was activated to fail it
 * from the loop (callbacks never run inside pgpool_query). */
static void job_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pgjob *j = arg;
    (void)fd; (void)what;
    job_dequeue(j);
    bool expired = j->deadline_ms && ((!j->fail_msg && j->timer_is_deadline) || util_mono_ms() >= j->deadline_ms);
    job_finish_unavailable(j, j->fail_msg ? j->fail_msg : "timed out waiting for a database connection", true,
                           expired);
}

static void job_fail_soon(struct pgjob *j, const char *why)
{
    job_dequeue(j);
    j->fail_msg = why;
    event_del(j->timer);
    event_active(j->timer, EV_TIMEOUT, 1);
}

/* Queue j (at the head: a job whose send failed) under its timer: it waits
 * db.queueTimeoutMs for a connection, or until its caller's deadline if
 * that comes first. */
static void job_enqueue(struct pgpool *p, struct pgjob *j, bool head)
{
    int64_t wait = p->queue_timeout_ms, now = util_mono_ms();
    struct timeval tv;
    j->timer_is_deadline = j->deadline_ms && j->deadline_ms - now <= wait;
    if (j->timer_is_deadline)
        wait = j->deadline_ms > now ? j->deadline_ms - now : 0;
    tv.tv_sec = (time_t)(wait / 1000);
    tv.tv_usec = (suseconds_t)(wait % 1000) * 1000;
    if (head)
        TAILQ_INSERT_HEAD(&p->queue, j, link);
    else
        TAILQ_INSERT_TAIL(&p->queue, j, link);
    j->queued = true;
    p->queue_len++;
    event_add(j->timer, &tv);
}

static void pool_fail_queue(struct pgpool *p, const char *why)
{
    struct pgjob *j;
    while ((j = TAILQ_FIRST(&p->queue)) != NULL)
        job_fail_soon(j, why);
}

/* ---- connection plumbing ---- */

static void conn_set_state(struct pgconn *c, enum pgc_state s)
{
    if (log_enabled(LOG_DEBUG))
        log_debug("event=pg_conn_state pool=%s conn=%d from=%s to=%s", c->pool->name, c->idx,
                  pgc_state_names[c->state], pgc_state_names[s]);
    c->state = s;
}

static void conn_clear_results(struct pgconn *c)
{
    if (c->res) PQclear(c->res);
    if (c->err) PQclear(c->err);
    c->res = c->err = NULL;
}

static void pgcancel_unref(struct pgcancel *q);

static void conn_close(struct pgconn *c)
{
    if (c->cancel) { pgcancel_unref(c->cancel); c->cancel = NULL; }
    c->cancel_ended = false;
    if (c->rd) { event_free(c->rd); c->rd = NULL; }
    if (c->wr) { event_free(c->wr); c->wr = NULL; }
    if (c->pg) { PQfinish(c->pg); c->pg = NULL; }
    c->fd = -1;
    c->verified = false;
    c->recycle = false;
    for (int i = 0; i < PG_MAX_HOSTS; i++) {
        dns_cancel(c->resolve[i].req);
        c->resolve[i].req = NULL;
    }
    c->resolving = 0;
    conn_clear_results(c);
}

static bool conn_live(const struct pgconn *c)
{
    return c->state != PGC_DOWN;
}

static bool pool_has_live_conn(const struct pgpool *p)
{
    for (int i = 0; i < p->size; i++)
        if (conn_live(&p->conns[i]))
            return true;
    return false;
}

/* A connection queries may use: idle or busy and, for a geography pool, verified. */
static bool conn_usable(const struct pgconn *c)
{
    return (c->state == PGC_IDLE || c->state == PGC_BUSY) && (c->verified || !c->pool->geography) && !c->recycle;
}

static void conn_on_read(evutil_socket_t fd, short what, void *arg);
static void conn_on_write(evutil_socket_t fd, short what, void *arg);

/* libpq may switch sockets while connecting: (re)create the events for the current one. */
static bool conn_track_socket(struct pgconn *c)
{
    int fd = PQsocket(c->pg);
    if (fd < 0)
        return false;
    if (fd == c->fd && c->rd)
        return true;
    if (c->rd) event_free(c->rd);
    if (c->wr) event_free(c->wr);
    c->fd = fd;
    c->rd = event_new(c->pool->base, fd, EV_READ | EV_PERSIST, conn_on_read, c);
    c->wr = event_new(c->pool->base, fd, EV_WRITE, conn_on_write, c);
    return c->rd && c->wr;
}

static void conn_arm_timer(struct pgconn *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(c->timer, &tv);
}

/* ---- connecting ---- */

static void conn_connected(struct pgconn *c)
{
    c->backoff_ms = PG_BACKOFF_MIN_MS;
    event_del(c->timer);
    event_del(c->wr);
    event_add(c->rd, NULL);
    log_info("event=pg_connected pool=%s conn=%d", c->pool->name, c->idx);
    conn_set_state(c, PGC_IDLE);
    /* Every connection of a geography pool checks which database it reached
     * before its first query, also every reconnect after the pool is set up. */
    if (c->pool->geography && c->pool->setup == SETUP_DONE) {
        conn_verify(c);
        return;
    }
    pool_maybe_setup(c->pool);
    pool_dispatch(c->pool);
}

static void conn_connect_poll(struct pgconn *c)
{
    PostgresPollingStatusType st = PQconnectPoll(c->pg);
    switch (st) {
    case PGRES_POLLING_OK:
        if (PQsetnonblocking(c->pg, 1) != 0 || !conn_track_socket(c)) {
            conn_broken(c, "cannot set the connection non-blocking");
            return;
        }
        conn_connected(c);
        return;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        if (!conn_track_socket(c)) {
            conn_broken(c, "lost the socket while connecting");
            return;
        }
        if (st == PGRES_POLLING_READING) {
            event_del(c->wr);
            event_add(c->rd, NULL);
        } else {
            event_del(c->rd);
            event_add(c->wr, NULL);
        }
        return;
    default:
        conn_broken(c, PQerrorMessage(c->pg));
        return;
    }
}

/* Start libpq's connect; extra_kw/extra_val (NULL-terminated, may be NULL)
 * come after the pool's parameters and win over the conninfo. The connect
 * timer is armed already. */
static void conn_connect(struct pgconn *c, const char *const *extra_kw, const char *const *extra_val)
{
    struct pgpool *p = c->pool;
    const char *kw[PG_MAX_PARAMS + 4], *val[PG_MAX_PARAMS + 4];
    int n = 0;

    for (int i = 0; i < p->n_params; i++, n++) {
        kw[n] = p->param_kw[i];
        val[n] = p->param_val[i];
    }
    for (int i = 0; extra_kw && extra_kw[i] && n < PG_MAX_PARAMS + 3; i++, n++) {
        kw[n] = extra_kw[i];
        val[n] = extra_val[i];
    }
    kw[n] = val[n] = NULL;
    c->pg = PQconnectStartParams(kw, val, 1);
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        conn_broken(c, c->pg ? PQerrorMessage(c->pg) : "out of memory");
        return;
    }
    c->fd = -1;
    /* libpq's first step after PQconnectStart is to wait for writability. */
    if (!conn_track_socket(c)) {
        conn_broken(c, PQerrorMessage(c->pg));
        return;
    }
    event_add(c->wr, NULL);
}

/* Every name resolved (or failed): connect to the hosts that have an
 * address, in the conninfo's order, libpq getting hostaddr for each. */
static void conn_connect_resolved(struct pgconn *c)
{
    struct pgpool *p = c->pool;
    char host[1024] = "", addr[PG_MAX_HOSTS * DNS_ADDR_MAX + PG_MAX_HOSTS] = "", port[256] = "";
    bool per_host_port = false;
    int used = 0;

    for (int i = 0; i < p->n_hosts; i++) {
        const char *a = p->by_name[i] ? c->resolve[i].addr : (p->hosts[i][0] == '/' ? "" : p->hosts[i]);
        size_t hl = strlen(host), al = strlen(addr), pl = strlen(port);
        if (p->by_name[i] && !*a)
            continue;   /* this name did not resolve: try the others */
        snprintf(host + hl, sizeof host - hl, "%s%s", used ? "," : "", p->hosts[i]);
        snprintf(addr + al, sizeof addr - al, "%s%s", used ? "," : "", a);
        snprintf(port + pl, sizeof port - pl, "%s%s", used ? "," : "", p->ports[i]);
        per_host_port = per_host_port || *p->ports[i];
        used++;
    }
    if (used == 0) {
        conn_broken(c, "no host name of the conninfo resolves");
        return;
    }
    {
        const char *kw[] = {"host", "hostaddr", per_host_port ? "port" : NULL, NULL};
        const char *val[] = {host, addr, port, NULL};
        conn_connect(c, kw, val);
    }
}

static void conn_on_resolved(int err, const char *addr, void *arg)
{
    struct pgresolve *r = arg;
    struct pgconn *c = r->conn;

    r->req = NULL;
    if (err == 0 && addr)
        snprintf(r->addr, sizeof r->addr, "%s", addr);
    else
        log_warn("event=pg_dns_failed pool=%s conn=%d host=%s error=\"%s\"", c->pool->name, c->idx,
                 c->pool->hosts[r->host], dns_strerror(err));
    if (--c->resolving == 0)
        conn_connect_resolved(c);
}

/* A connection attempt: resolve the conninfo's host names on the loop
 * first (never inside libpq, which would block), then connect. */
static void conn_start(struct pgconn *c)
{
    struct pgpool *p = c->pool;

    conn_set_state(c, PGC_CONNECTING);
    conn_arm_timer(c, p->connect_timeout_ms);   /* bounds resolving and connecting together */
    if (p->n_hosts == 0) {
        conn_connect(c, NULL, NULL);
        return;
    }
    c->resolving = 0;
    for (int i = 0; i < p->n_hosts; i++) {
        c->resolve[i].addr[0] = '\0';
        if (p->by_name[i])
            c->resolving++;
    }
    /* dns_resolve never calls back inside itself: the count is complete first */
    for (int i = 0; i < p->n_hosts; i++)
        if (p->by_name[i])
            c->resolve[i].req = dns_resolve(p->dns, p->hosts[i], conn_on_resolved, &c->resolve[i]);
}

/* ---- a statement in flight (job or setup) ---- */

static void conn_flush(struct pgconn *c)
{
    int r = PQflush(c->pg);
    if (r < 0)
        conn_broken(c, PQerrorMessage(c->pg));
    else if (r > 0)
        event_add(c->wr, NULL);
}

static void conn_sent(struct pgconn *c)
{
    conn_arm_timer(c, c->pool->query_timeout_ms);
    conn_flush(c);
}

static void conn_collect(struct pgconn *c, PGresult *r)
{
    switch (PQresultStatus(r)) {
    case PGRES_FATAL_ERROR:
    case PGRES_NONFATAL_ERROR:
    case PGRES_BAD_RESPONSE:
        if (!c->err) c->err = r;
        else PQclear(r);
        return;
    default:
        if (c->res) PQclear(c->res);
        c->res = r;
        return;
    }
}

/* What an error result means for the connection and the caller. */
enum pgerr_kind {
    PGERR_SQL,        /* the statement's own error: the caller handles it */
    PGERR_RETRY,      /* the server could not serve it now; the connection is fine */
    PGERR_RECONNECT,  /* this server cannot serve this connection any more */
};

static enum pgerr_kind pgerr_classify(const char *sqlstate)
{
    static const char *const reconnect[] = {
        "25006",  /* read_only_sql_transaction: the primary we reached is now a standby */
        "57P01",  /* admin_shutdown */
        "57P02",  /* crash_shutdown */
        "57P03",  /* cannot_connect_now: starting up or in recovery */
        NULL,
    };
    static const char *const retry[] = {
        "57014",  /* query_canceled: statement_timeout or our own cancel */
        "55P03",  /* lock_not_available: lock_timeout */
        NULL,
    };
    if (!sqlstate)
        return PGERR_SQL;
    for (int i = 0; reconnect[i]; i++)
        if (strcmp(sqlstate, reconnect[i]) == 0)
            return PGERR_RECONNECT;
    for (int i = 0; retry[i]; i++)
        if (strcmp(sqlstate, retry[i]) == 0)
            return PGERR_RETRY;
    return PGERR_SQL;
}

/*
 * Cancelling a statement from the loop. PostgreSQL 15's libpq offers only
 * PQcancel(), which connects, sends the CancelRequest and waits for the
 * server to close, all blocking (the key it needs is inside the opaque
 * PGcancel, so we cannot send the request ourselves; pg_cancel_backend()
 * would need a free pool connection, which a pile-up of stuck statements
 * does not leave). So a small detached thread runs PQcancel() and touches
 * nothing but its own PGcancel: no pool, no libevent, no logging. It is
 * bounded: at most PG_CANCEL_MAX_THREADS alive in the process (a connection
 * that finds none free is dropped instead), each with a small stack and all
 * signals blocked. A thread lives as long as the server takes to answer a
 * cancel: milliseconds, or until a stopped server runs again. Its outcome
 * needs no reporting: the cancelled statement ends with 57014 on the
 * connection, and the grace timer drops the connection if it never does.
 */
static atomic_int pg_cancel_threads;

/* One cancel request, shared by the connection and its thread (two
 * references; the last one frees it). done: PQcancel() has returned, so no
 * CancelRequest of ours can reach the backend any more. */
struct pgcancel {
    PGcancel *k;
    atomic_int refs;
    atomic_bool done;
};

static void pgcancel_unref(struct pgcancel *q)
{
    if (atomic_fetch_sub(&q->refs, 1) == 1) {
        PQfreeCancel(q->k);
        free(q);
    }
}

static void *cancel_thread(void *arg)
{
    struct pgcancel *q = arg;
    char err[256];
    (void)PQcancel(q->k, err, sizeof err);   /* a failure shows as the grace timer firing */
    atomic_store(&q->done, true);
    pgcancel_unref(q);
    atomic_fetch_sub(&pg_cancel_threads, 1);
    return NULL;
}

static bool conn_cancel_start(struct pgconn *c)
{
    struct pgcancel *q;
    pthread_t t;
    pthread_attr_t attr;
    sigset_t all, old;
    int rc;

    if (atomic_fetch_add(&pg_cancel_threads, 1) >= PG_CANCEL_MAX_THREADS) {
        atomic_fetch_sub(&pg_cancel_threads, 1);
        return false;
    }
    q = xcalloc(1, sizeof *q);
    if (!(q->k = PQgetCancel(c->pg)) || pthread_attr_init(&attr) != 0) {
        if (q->k) PQfreeCancel(q->k);
        free(q);
        atomic_fetch_sub(&pg_cancel_threads, 1);
        return false;
    }
    atomic_init(&q->refs, 2);
    atomic_init(&q->done, false);
    /* The thread inherits this mask: signals stay with the loop's thread. */
    sigfillset(&all);
    rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (rc == 0) rc = pthread_attr_setstacksize(&attr, 256 * 1024);
    if (rc == 0) rc = pthread_sigmask(SIG_BLOCK, &all, &old);
    if (rc == 0) {
        rc = pthread_create(&t, &attr, cancel_thread, q);
        (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        PQfreeCancel(q->k);
        free(q);
        atomic_fetch_sub(&pg_cancel_threads, 1);
        return false;
    }
    c->cancel = q;
    return true;
}

/* The job's statement overran query_timeout_ms: fail it now, and have its
 * backend stop it rather than leave it running (and holding locks) after we
 * gave up. The connection is not reused until the statement has ended. */
static void conn_statement_timeout(struct pgconn *c)
{
    struct pgjob *j = c->job;
    struct pgpool *p = c->pool;

    if (!conn_cancel_start(c)) {
        conn_broken(c, "statement timed out (no cancel possible: dropping the connection)");
        return;
    }
    log_warn("event=pg_statement_timeout pool=%s conn=%d backend_pid=%d timeout_ms=%d action=cancel grace_ms=%d",
             p->name, c->idx, PQbackendPID(c->pg), p->query_timeout_ms, p->cancel_grace_ms);
    c->job = NULL;
    conn_set_state(c, PGC_CANCELLING);
    c->cancel_ended = false;
    c->cancel_deadline = util_mono_ms() + p->cancel_grace_ms;
    conn_arm_timer(c, p->cancel_grace_ms);
    job_finish_unavailable(j, "statement timed out", false, false);
}

/* How often a connection whose statement has ended looks whether its cancel
 * request has been delivered (a rare wait: milliseconds). */
#define PG_CANCEL_POLL_MS 2

/* The cancelled statement has ended. The connection is clean again once our
 * CancelRequest can no longer arrive: the statement may have ended by itself
 * just before the request reached the server, which would then cancel the
 * NEXT statement sent on this connection. So it waits for the cancel thread
 * (within the grace period) before taking work. */
static void conn_cancel_done(struct pgconn *c)
{
    conn_clear_results(c);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        conn_broken(c, "connection lost while its statement was cancelled");
        return;
    }
    c->cancel_ended = true;
    if (c->cancel && !atomic_load(&c->cancel->done)) {
        int64_t left = c->cancel_deadline - util_mono_ms();
        conn_arm_timer(c, (int)(left < PG_CANCEL_POLL_MS ? (left > 0 ? left : 0) : PG_CANCEL_POLL_MS));
        return;
    }
    if (c->cancel) { pgcancel_unref(c->cancel); c->cancel = NULL; }
    c->cancel_ended = false;
    log_info("event=pg_statement_cancelled pool=%s conn=%d", c->pool->name, c->idx);
    if (c->recycle) {
        conn_broken(c, "recycled: another connection found its server read-only");
        return;
    }
    conn_set_state(c, PGC_IDLE);
    pool_dispatch(c->pool);
}

static void pool_recycle_others(struct pgpool *p, const struct pgconn *except);

/*
 * A server that became a standby or read-only after we connected (a
 * demotion without a restart): libpq keeps the GUC_REPORT parameters
 * in_hot_standby and default_transaction_read_only up to date after every
 * statement. With a conninfo that wants the primary, the connection is
 * replaced once its statement has ended, and so are the pool's others,
 * before a write fails on them.
 */
static void conn_check_role(struct pgconn *c)
{
    const char *hs, *ro;
    if (!c->pool->want_primary || c->recycle)
        return;
    hs = PQparameterStatus(c->pg, "in_hot_standby");
    ro = PQparameterStatus(c->pg, "default_transaction_read_only");
    if ((hs && strcmp(hs, "on") == 0) || (ro && strcmp(ro, "on") == 0)) {
        log_warn("event=pg_server_read_only pool=%s conn=%d in_hot_standby=%s default_transaction_read_only=%s "
                 "action=reconnect", c->pool->name, c->idx, hs ? hs : "-", ro ? ro : "-");
        c->recycle = true;
        pool_recycle_others(c->pool, c);
    }
}

/* Other connections of the pool are likely on the same demoted server: drop
 * the idle ones now, the others once their statement ends. */
static void pool_recycle_others(struct pgpool *p, const struct pgconn *except)
{
    for (int i = 0; i < p->size; i++) {
        struct pgconn *o = &p->conns[i];
        if (o == except)
            continue;
        if (o->state == PGC_IDLE || o->state == PGC_SETUP)
            conn_broken(o, "recycled: another connection found its server read-only");
        else if (o->state != PGC_DOWN && o->state != PGC_CONNECTING)
            o->recycle = true;
    }
}

/* This connection's server cannot serve it any more (read-only, shutting
 * down): drop it and reconnect through the host list. After 25006 the other
 * connections of the pool are likely on the same demoted server: they are
 * dropped too (idle ones now, the others once their statement ends) rather
 * than each failing one write later. */
static void conn_server_gone(struct pgconn *c, const char *sqlstate, const char *message)
{
    struct pgpool *p = c->pool;
    char why[200];
    bool read_only = sqlstate && strcmp(sqlstate, "25006") == 0;

    snprintf(why, sizeof why, "server cannot serve this connection (%.5s): %.150s", sqlstate ? sqlstate : "-",
             message ? message : "");
    conn_broken(c, why);
    if (read_only)
        pool_recycle_others(p, c);
}

static void conn_job_done(struct pgconn *c)
{
    struct pgjob *j = c->job;
    struct pgq_result r = {0};
    c->job = NULL;
    if (c->err) {
        r.status = PGQ_SQL_ERROR;
        r.sqlstate = PQresultErrorField(c->err, PG_DIAG_SQLSTATE);
        r.message = PQresultErrorMessage(c->err);
        r.constraint = PQresultErrorField(c->err, PG_DIAG_CONSTRAINT_NAME);
        r.column = PQresultErrorField(c->err, PG_DIAG_COLUMN_NAME);
        r.table = PQresultErrorField(c->err, PG_DIAG_TABLE_NAME);
        if (!r.sqlstate) r.sqlstate = "XX000";
        if (pgerr_classify(r.sqlstate) == PGERR_RETRY)
            r.status = PGQ_UNAVAILABLE;
    } else {
        r.status = PGQ_OK;
        r.res = c->res;
    }
    conn_set_state(c, PGC_IDLE);
    /* The callback may queue more work; the connection is idle already
     * (and not picked when it is to be recycled). */
    job_finish(j, &r);
    conn_clear_results(c);
    if (c->recycle) {
        conn_broken(c, "recycled: another connection found its server read-only");
        return;
    }
    pool_dispatch(c->pool);
}

static void conn_op_done(struct pgconn *c)
{
    const char *sqlstate = c->err ? PQresultErrorField(c->err, PG_DIAG_SQLSTATE) : NULL;

    event_del(c->timer);
    if (c->state == PGC_CANCELLING) {
        conn_cancel_done(c);
        return;
    }
    /* Also a setup statement: a migration on a read-only server is not a failed migration.
     * A statement whose result arrived complete keeps it even if the
     * connection died just after: it may have committed; the dead connection
     * is noticed at its next use. */
    bool dead = PQstatus(c->pg) != CONNECTION_OK;
    if ((c->err && (dead || pgerr_classify(sqlstate) == PGERR_RECONNECT)) || (dead && !c->res)) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s", c->err ? PQresultErrorMessage(c->err) : PQerrorMessage(c->pg));
        msg[strcspn(msg, "\n")] = '\0';
        conn_server_gone(c, sqlstate, msg);
        return;
    }
    conn_check_role(c);
    if (c->recycle && c->state == PGC_SETUP) {   /* set up again on the new primary */
        conn_broken(c, "recycled: its server is read-only");
        return;
    }
    if (c->state == PGC_BUSY)
        conn_job_done(c);
    else if (c->state == PGC_SETUP)
        setup_next(c);
}

static void conn_consume(struct pgconn *c)
{
    if (!PQconsumeInput(c->pg)) {
        conn_broken(c, PQerrorMessage(c->pg));
        return;
    }
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            conn_op_done(c);
            return;
        }
        conn_collect(c, r);
    }
}

static void conn_on_read(evutil_socket_t fd, short what, void *arg)
{
    struct pgconn *c = arg;
    PGnotify *n;
    (void)fd; (void)what;
    switch (c->state) {
    case PGC_CONNECTING:
        conn_connect_poll(c);
        break;
    case PGC_SETUP:
    case PGC_BUSY:
    case PGC_CANCELLING:
        conn_consume(c);
        break;
    case PGC_IDLE:
        /* Nothing is expected while idle: this is the server going away
         * (or a notice). Either way, find out now. */
        if (!PQconsumeInput(c->pg) || PQstatus(c->pg) != CONNECTION_OK) {
            conn_broken(c, PQerrorMessage(c->pg));
            return;
        }
        while ((n = PQnotifies(c->pg)) != NULL)
            PQfreemem(n);
        break;
    case PGC_DOWN:
        break;
    }
}

static void conn_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct pgconn *c = arg;
    (void)fd; (void)what;
    if (c->state == PGC_CONNECTING)
        conn_connect_poll(c);
    else if (c->state == PGC_SETUP || c->state == PGC_BUSY || c->state == PGC_CANCELLING)
        conn_flush(c);
}

static void conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct pgconn *c = arg;
    (void)fd; (void)what;
    switch (c->state) {
    case PGC_DOWN:
        conn_start(c);
        break;
    case PGC_CONNECTING:
        conn_broken(c, "connect timed out");
        break;
    case PGC_SETUP:
        /* A setup statement that overruns its deadline: drop the connection;
         * the server aborts the statement when it notices the socket is gone
         * (client_connection_check_interval). */
        conn_broken(c, "statement timed out");
        break;
    case PGC_BUSY:
        conn_statement_timeout(c);
        break;
    case PGC_CANCELLING:
        if (c->cancel_ended && util_mono_ms() < c->cancel_deadline)
            conn_cancel_done(c);   /* look again whether the cancel request is delivered */
        else if (c->cancel_ended)
            conn_broken(c, "cancel request not delivered within the grace period");
        else
            conn_broken(c, "cancelled statement did not end within the grace period");
        break;
    case PGC_IDLE:
        break;
    }
}

/* Close, schedule a reconnect, and fail the statement that was in flight. */
static void conn_broken(struct pgconn *c, const char *why)
{
    struct pgpool *p = c->pool;
    struct pgjob *j = c->job;
    bool was_setup = c->state == PGC_SETUP;
    char msg[256];

    snprintf(msg, sizeof msg, "%s", why && *why ? why : "connection failed");
    msg[strcspn(msg, "\n")] = '\0';
    if (c->state != PGC_CONNECTING || log_enabled(LOG_DEBUG) || p->ever_ready)
        log_warn("event=pg_conn_lost pool=%s conn=%d state=%s retry_ms=%d error=\"%s\"", p->name,
                 c->idx, pgc_state_names[c->state], c->backoff_ms, msg);
    c->job = NULL;
    conn_close(c);
    conn_set_state(c, PGC_DOWN);
    conn_arm_timer(c, c->backoff_ms);
    c->backoff_ms = c->backoff_ms * 2 > PG_BACKOFF_MAX_MS ? PG_BACKOFF_MAX_MS : c->backoff_ms * 2;
    if (was_setup && p->setup == SETUP_RUNNING)
        p->setup = SETUP_NONE;
    if (j)
        job_finish_unavailable(j, "database connection lost", false, false);
    if (!pool_has_live_conn(p))
        pool_fail_queue(p, "database unreachable");
    else
        pool_maybe_setup(p);
}

/* ---- setup: migrations, then the geography identity check ---- */

static const char pg_identity_sql[] =
    "WITH ins AS (INSERT INTO geo_identity (geography) VALUES ($1) "
    "ON CONFLICT (only_row) DO NOTHING RETURNING geography) "
    "SELECT geography FROM ins UNION ALL SELECT geography FROM geo_identity LIMIT 1";
/* geography_check_only: read, never write (a stamp agent's role may only read it). */
static const char pg_identity_check_sql[] = "SELECT geography FROM geo_identity";

static bool pool_has_usable_conn(const struct pgpool *p)
{
    for (int i = 0; i < p->size; i++)
        if (conn_usable(&p->conns[i]))
            return true;
    return false;
}

static void setup_fail(struct pgconn *c, const char *word, const char *detail)
{
    struct pgpool *p = c->pool;
    char msg[300];
    log_error("event=pg_setup_failed pool=%s reason=%s detail=\"%.200s\"", p->name, word,
              detail ? detail : "");
    p->setup_error = word;
    snprintf(msg, sizeof msg, "%s", word);
    conn_broken(c, msg);
    pool_fail_queue(p, word);
    if (strcmp(word, "wrong_geography") == 0 && p->on_wrong_geography)
        p->on_wrong_geography(p->cb_arg, p->ever_ready);
}

static bool setup_send(struct pgconn *c, const char *sql)
{
    if (!PQsendQuery(c->pg, sql)) {
        conn_broken(c, PQerrorMessage(c->pg));
        return false;
    }
    conn_sent(c);
    return true;
}

static void setup_send_identity(struct pgconn *c)
{
    struct pgpool *p = c->pool;
    const char *values[1] = {p->geography};
    bool ok = p->geography_check_only
                  ? PQsendQuery(c->pg, pg_identity_check_sql) != 0
                  : PQsendQueryParams(c->pg, pg_identity_sql, 1, NULL, values, NULL, NULL, 0) != 0;
    if (!ok) {
        conn_broken(c, PQerrorMessage(c->pg));
        return;
    }
    conn_sent(c);
}

/* The identity check's answer: NULL when the database is this pool's
 * geography, else the readiness word, with a sentence in detail. */
static const char *identity_verdict(struct pgconn *c, char *detail, size_t cap)
{
    struct pgpool *p = c->pool;
    const char *got;
    if (c->err) {
        const char *state = PQresultErrorField(c->err, PG_DIAG_SQLSTATE);
        snprintf(detail, cap, "%s", PQresultErrorMessage(c->err));
        detail[strcspn(detail, "\n")] = '\0';
        if (!p->geography_check_only)
            return "migration_failed";
        if (state && strcmp(state, "42P01") == 0) {
            snprintf(detail, cap, "the database has no geo_identity table: not a geography database, configured as '%s'",
                     p->geography);
            return "wrong_geography";
        }
        return "identity_check_failed";
    }
    got = (c->res && PQntuples(c->res) == 1) ? PQgetvalue(c->res, 0, 0) : "";
    if (strcmp(got, p->geography) != 0) {
        snprintf(detail, cap, "database belongs to geography '%s', configured as '%s'", got, p->geography);
        return "wrong_geography";
    }
    return NULL;
}

static void setup_done(struct pgconn *c)
{
    struct pgpool *p = c->pool;
    p->setup = SETUP_DONE;
    p->setup_error = NULL;
    p->ever_ready = true;
    c->verified = true;
    log_info("event=pg_pool_ready pool=%s", p->name);
    conn_set_state(c, PGC_IDLE);
    conn_clear_results(c);
    /* Connections that came up while the pool was being set up check their own database now. */
    for (int i = 0; p->geography && i < p->size; i++)
        if (p->conns[i].state == PGC_IDLE && !p->conns[i].verified)
            conn_verify(&p->conns[i]);
    pool_dispatch(p);
}

static void setup_check_identity(struct pgconn *c)
{
    char detail[300];
    const char *word = identity_verdict(c, detail, sizeof detail);
    if (word) {
        setup_fail(c, word, detail);
        return;
    }
    setup_done(c);
}

/* One connection's own identity check, after the pool was set up. */
static void conn_verify(struct pgconn *c)
{
    conn_set_state(c, PGC_SETUP);
    c->setup_step = SETUP_VERIFY;
    c->setup_rollback = false;
    conn_clear_results(c);
    setup_send_identity(c);
}

static void conn_verify_done(struct pgconn *c)
{
    struct pgpool *p = c->pool;
    char detail[300];
    const char *word = identity_verdict(c, detail, sizeof detail);

    if (word) {
        /* Never query a database that is not (or no longer) ours: drop the
         * connection; with no verified one left, queries fail at once. */
        log_error("event=pg_identity_refused pool=%s conn=%d reason=%s detail=\"%.200s\"", p->name, c->idx,
                  word, detail);
        p->setup_error = word;
        conn_broken(c, word);
        if (!pool_has_usable_conn(p))
            pool_fail_queue(p, word);
        if (strcmp(word, "wrong_geography") == 0 && p->on_wrong_geography)
            p->on_wrong_geography(p->cb_arg, p->ever_ready);
        return;
    }
    c->verified = true;
    conn_clear_results(c);
    conn_set_state(c, PGC_IDLE);
    if (p->setup_error) {
        log_info("event=pg_identity_ok pool=%s conn=%d geography=%s previous=%s", p->name, c->idx, p->geography,
                 p->setup_error);
        p->setup_error = NULL;
    }
    pool_dispatch(p);
}

/* The probe's answer: which migrations the table records as applied. */
static void setup_read_probe(struct pgconn *c)
{
    struct pgpool *p = c->pool;
    memset(p->applied, 0, (size_t)p->n_migrations * sizeof *p->applied);
    /* No table (a new database) or not readable: apply all, as before. */
    if (c->err || !c->res)
        return;
    for (int r = 0; r < PQntuples(c->res); r++) {
        int v = atoi(PQgetvalue(c->res, r, 0));
        for (int i = 0; i < p->n_migrations; i++)
            if (p->migrations[i].version == v)
                p->applied[i] = true;
    }
}

/* Called when the previous setup statement finished (or to start). */
static void setup_next(struct pgconn *c)
{
    struct pgpool *p = c->pool;

    if (c->setup_step == SETUP_VERIFY) {
        conn_verify_done(c);
        return;
    }
    if (c->setup_step == p->n_migrations + 1) {
        setup_check_identity(c);
        return;
    }
    if (c->setup_step == SETUP_IDENT_FIRST) {
        /* Never migrate another geography's database. */
        char detail[300];
        const char *word = identity_verdict(c, detail, sizeof detail);
        if (word) {
            setup_fail(c, word, detail);
            return;
        }
        conn_clear_results(c);
        if (p->n_migrations > 0) {
            c->setup_step = SETUP_PROBE;
            setup_send(c, p->probe_sql);
            return;
        }
        c->setup_step = -1;
    }
    if (c->setup_step == SETUP_PROBE) {
        setup_read_probe(c);
        c->setup_step = -1;
    } else if (c->setup_step >= 0 && c->setup_step < p->n_migrations && !c->setup_rollback) {
        /* Result of migration setup_step. */
        if (c->err) {
            const char *state = PQresultErrorField(c->err, PG_DIAG_SQLSTATE);
            if (!state || strcmp(state, "23505") != 0) {
                setup_fail(c, "migration_failed", PQresultErrorMessage(c->err));
                return;
            }
            /* Its schema_migrations row exists: applied before. Leave the aborted transaction. */
            conn_clear_results(c);
            c->setup_rollback = true;
            setup_send(c, "ROLLBACK");
            return;
        }
        log_info("event=migration_applied pool=%s version=%d name=%s", p->name,
                 p->migrations[c->setup_step].version, p->migrations[c->setup_step].name);
    } else if (c->setup_rollback) {
        c->setup_rollback = false;
        if (c->err) {
            setup_fail(c, "migration_failed", PQresultErrorMessage(c->err));
            return;
        }
    }
    conn_clear_results(c);
    c->setup_step++;
    /* Migrations the probe found applied are skipped: a role that may not
     * create tables (a stamp agent's) starts on a schema its owner migrated. */
    while (c->setup_step < p->n_migrations && p->applied[c->setup_step])
        c->setup_step++;
    if (c->setup_step < p->n_migrations) {
        setup_send(c, p->migration_sql[c->setup_step]);
        return;
    }
    if (!p->geography || p->geography_check_only) {   /* check_only: checked first */
        setup_done(c);
        return;
    }
    c->setup_step = p->n_migrations + 1;
    setup_send_identity(c);
}

static void pool_maybe_setup(struct pgpool *p)
{
    if (p->setup != SETUP_NONE)
        return;
    for (int i = 0; i < p->size; i++) {
        struct pgconn *c = &p->conns[i];
        if (c->state == PGC_IDLE) {
            p->setup = SETUP_RUNNING;
            conn_set_state(c, PGC_SETUP);
            c->setup_rollback = false;
            if (p->geography && p->geography_check_only) {
                c->setup_step = SETUP_IDENT_FIRST;
                setup_send_identity(c);
                return;
            }
            if (p->n_migrations > 0) {
                c->setup_step = SETUP_PROBE;
                setup_send(c, p->probe_sql);
                return;
            }
            c->setup_step = -1;
            setup_next(c);
            return;
        }
    }
}

static char *pool_migration_sql(const struct migration *m, const char *table)
{
    /* table and name come from the build (identifiers we chose), never from input */
    return xasprintf("BEGIN;\n"
                     "SELECT pg_advisory_xact_lock(%lld);\n"
                     "CREATE TABLE IF NOT EXISTS %s (version integer PRIMARY KEY, "
                     "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());\n"
                     "INSERT INTO %s (version, name) VALUES (%d, '%s');\n"
                     "%s\n;\nCOMMIT;",
                     PG_MIGRATION_LOCK, table, table, m->version, m->name, m->sql);
}

/* ---- dispatch ---- */

static void conn_send_job(struct pgconn *c, struct pgjob *j)
{
    c->job = j;
    conn_set_state(c, PGC_BUSY);
    if (!PQsendQueryParams(c->pg, j->sql, j->nparams, NULL, (const char *const *)j->values, NULL,
                           NULL, 0)) {
        /* Nothing reached the server: the job may run on another connection,
         * first in line, waiting again under its timer. */
        c->job = NULL;
        job_enqueue(c->pool, j, true);
        conn_broken(c, PQerrorMessage(c->pg));
        return;
    }
    conn_sent(c);
}

/* The first queued job whose caller still waits: one whose deadline passed
 * (its timer may not have run yet) is failed, never sent. */
static struct pgjob *pool_next_job(struct pgpool *p)
{
    struct pgjob *j;
    int64_t now = util_mono_ms();
    while ((j = TAILQ_FIRST(&p->queue)) != NULL && j->deadline_ms && now >= j->deadline_ms)
        job_fail_soon(j, "the caller's deadline passed while it waited");
    return j;
}

static void pool_dispatch(struct pgpool *p)
{
    if (p->setup != SETUP_DONE)
        return;
    for (int i = 0; i < p->size && !TAILQ_EMPTY(&p->queue); i++) {
        struct pgconn *c = &p->conns[i];
        if (c->state == PGC_IDLE && conn_usable(c)) {
            struct pgjob *j = pool_next_job(p);
            if (!j)
                break;
            job_dequeue(j);
            event_del(j->timer);
            conn_send_job(c, j);
        }
    }
}

/* ---- connection parameters ---- */

static void pool_free_hosts(struct pgpool *p)
{
    for (int i = 0; i < p->n_hosts; i++) {
        free(p->hosts[i]);
        free(p->ports[i]);
    }
    p->n_hosts = 0;
}

static void pool_param(struct pgpool *p, const char *kw, const char *val, bool own)
{
    if (p->n_params >= PG_MAX_PARAMS) {
        log_error("event=pg_params_overflow pool=%s", p->name);
        abort();   /* a build error: PG_MAX_PARAMS is too small */
    }
    p->param_kw[p->n_params] = kw;
    p->param_val[p->n_params] = val;
    if (own)
        p->param_own[p->n_params] = (char *)val;
    p->n_params++;
}

static int opt_or(int v, int def)
{
    return v == 0 ? def : v;
}

/* The "options" startup parameter: our server-side bounds, then the
 * conninfo's own options (later -c settings win on the server). */
static char *pool_server_options(const struct pgpool_opts *o)
{
    int stmt = opt_or(o->statement_timeout_ms, o->query_timeout_ms);
    int lock = opt_or(o->lock_timeout_ms, o->query_timeout_ms / 2);
    int idle = opt_or(o->idle_in_tx_timeout_ms, 2 * o->query_timeout_ms);
    char *user = NULL, *errmsg = NULL, *out, *bounds;
    PQconninfoOption *opts = PQconninfoParse(o->conninfo, &errmsg);

    /* An unparsable conninfo fails at connect, with libpq's message. */
    for (PQconninfoOption *it = opts; it && it->keyword; it++)
        if (strcmp(it->keyword, "options") == 0 && it->val && *it->val)
            user = xstrdup(it->val);
    if (opts) PQconninfoFree(opts);
    if (errmsg) PQfreemem(errmsg);
    bounds = xasprintf("-c client_connection_check_interval=%d", PG_CLIENT_CHECK_MS);
    if (stmt > 0) { out = xasprintf("%s -c statement_timeout=%d", bounds, stmt); free(bounds); bounds = out; }
    if (lock > 0) { out = xasprintf("%s -c lock_timeout=%d", bounds, lock); free(bounds); bounds = out; }
    if (idle > 0) {
        out = xasprintf("%s -c idle_in_transaction_session_timeout=%d", bounds, idle);
        free(bounds);
        bounds = out;
    }
    out = user ? xasprintf("%s %s", bounds, user) : xstrdup(bounds);
    free(bounds);
    free(user);
    return out;
}

/* A conninfo value by keyword (fresh copy, NULL when absent or empty). */
static char *conninfo_value(const char *conninfo, const char *keyword)
{
    char *out = NULL, *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &errmsg);
    for (PQconninfoOption *it = opts; it && it->keyword; it++)
        if (strcmp(it->keyword, keyword) == 0 && it->val && *it->val)
            out = xstrdup(it->val);
    if (opts) PQconninfoFree(opts);
    if (errmsg) PQfreemem(errmsg);
    return out;
}

/* Split a comma list into at most cap fresh strings; returns the count (cap + 1: too many). */
static int split_list(const char *list, char **out, int cap)
{
    int n = 0;
    const char *s = list;
    for (;;) {
        size_t len = strcspn(s, ",");
        if (n == cap) {
            for (int i = 0; i < n; i++) free(out[i]);
            return cap + 1;
        }
        out[n++] = xasprintf("%.*s", (int)len, s);
        if (!s[len])
            return n;
        s += len + 1;
    }
}

static bool host_is_numeric(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* Which hosts of the conninfo pgpool resolves (see struct pgpool). Leaves
 * n_hosts 0 - libpq on its own - when there is nothing to resolve (numeric
 * hosts, sockets, a hostaddr given) or a list it cannot pair up. */
static void pool_parse_hosts(struct pgpool *p, struct dns *dns)
{
    char *host = conninfo_value(p->conninfo, "host"), *hostaddr = conninfo_value(p->conninfo, "hostaddr");
    char *port = conninfo_value(p->conninfo, "port"), *ports[PG_MAX_HOSTS];
    int n = 0, np = 0, names = 0;

    if (host && !hostaddr && (n = split_list(host, p->hosts, PG_MAX_HOSTS)) <= PG_MAX_HOSTS) {
        np = port ? split_list(port, ports, PG_MAX_HOSTS) : 0;
        for (int i = 0; i < n; i++) {
            p->ports[i] = xstrdup(np == n && np > 1 ? ports[i] : "");
            p->by_name[i] = p->hosts[i][0] && p->hosts[i][0] != '/' && p->hosts[i][0] != '@' &&
                            !host_is_numeric(p->hosts[i]);
            names += p->by_name[i];
        }
        for (int i = 0; np <= PG_MAX_HOSTS && i < np; i++)
            free(ports[i]);
        p->n_hosts = n;
        if (names == 0 || (np > 1 && np != n))   /* nothing to resolve, or libpq's error to give */
            pool_free_hosts(p);
    } else if (n > PG_MAX_HOSTS) {
        log_warn("event=pg_dns_skipped pool=%s reason=\"more than %d hosts: libpq resolves them (blocking)\"", p->name,
                 PG_MAX_HOSTS);
    }
    p->dns = p->n_hosts ? dns : NULL;
    free(host);
    free(hostaddr);
    free(port);
}

static bool pool_wants_primary(const char *conninfo)
{
    bool want = false;
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &errmsg);
    for (PQconninfoOption *it = opts; it && it->keyword; it++)
        if (strcmp(it->keyword, "target_session_attrs") == 0 && it->val)
            want = strcmp(it->val, "read-write") == 0 || strcmp(it->val, "primary") == 0;
    if (opts) PQconninfoFree(opts);
    if (errmsg) PQfreemem(errmsg);
    return want;
}

/*
 * PQconnectStartParams with expand_dbname: the last value of a keyword wins.
 * Keepalives and the application name come before the conninfo, so the
 * operator's conninfo overrides them; "options" comes after it, merged.
 */
static void pool_params(struct pgpool *p, const struct pgpool_opts *o)
{
    if (o->application_name)
        pool_param(p, "fallback_application_name", xstrdup(o->application_name), true);
    pool_param(p, "keepalives", "1", false);
    pool_param(p, "keepalives_idle", xasprintf("%d", opt_or(o->keepalives_idle_s, 10)), true);
    pool_param(p, "keepalives_interval", xasprintf("%d", opt_or(o->keepalives_interval_s, 3)), true);
    pool_param(p, "keepalives_count", xasprintf("%d", opt_or(o->keepalives_count, 3)), true);
    pool_param(p, "dbname", p->conninfo, false);
    p->want_primary = pool_wants_primary(p->conninfo);
    if (o->dns)
        pool_parse_hosts(p, o->dns);
    pool_param(p, "options", pool_server_options(o), true);
    p->param_kw[p->n_params] = NULL;
    p->param_val[p->n_params] = NULL;
}

/* ---- public ---- */

struct pgpool *pgpool_new(struct event_base *base, const struct pgpool_opts *o)
{
    struct pgpool *p = xcalloc(1, sizeof *p);
    p->base = base;
    p->name = xstrdup(o->name);
    p->conninfo = xstrdup(o->conninfo);
    p->geography = o->geography ? xstrdup(o->geography) : NULL;
    p->geography_check_only = o->geography_check_only;
    p->on_wrong_geography = o->on_wrong_geography;
    p->cb_arg = o->cb_arg;
    p->size = o->size > 0 ? o->size : 1;
    p->connect_timeout_ms = o->connect_timeout_ms;
    p->query_timeout_ms = o->query_timeout_ms;
    p->queue_timeout_ms = o->queue_timeout_ms;
    p->max_queue = o->max_queue;
    p->cancel_grace_ms = opt_or(o->cancel_grace_ms, o->query_timeout_ms);
    pool_params(p, o);
    p->migrations = o->migrations;
    p->n_migrations = o->n_migrations;
    p->migration_sql = xcalloc((size_t)p->n_migrations + 1, sizeof(char *));
    p->applied = xcalloc((size_t)p->n_migrations + 1, sizeof *p->applied);
    /* the table name comes from the build, never from input */
    p->probe_sql = xasprintf("SELECT version FROM %s",
                             o->migrations_table ? o->migrations_table : "schema_migrations");
    for (int i = 0; i < p->n_migrations; i++)
        p->migration_sql[i] = pool_migration_sql(&p->migrations[i],
                                                 o->migrations_table ? o->migrations_table : "schema_migrations");
    TAILQ_INIT(&p->queue);
    p->conns = xcalloc((size_t)p->size, sizeof *p->conns);
    for (int i = 0; i < p->size; i++) {
        struct pgconn *c = &p->conns[i];
        c->pool = p;
        c->idx = i;
        for (int h = 0; h < PG_MAX_HOSTS; h++) {
            c->resolve[h].conn = c;
            c->resolve[h].host = h;
        }
        c->fd = -1;
        c->backoff_ms = PG_BACKOFF_MIN_MS;
        c->timer = event_new(base, -1, 0, conn_on_timer, c);
        if (!c->timer) {
            log_error("event=event_new_failed");
            abort();
        }
        conn_start(c);
    }
    return p;
}

void pgpool_free(struct pgpool *p)
{
    struct pgjob *j;
    if (!p) return;
    for (int i = 0; i < p->size; i++) {
        struct pgconn *c = &p->conns[i];
        if (c->job) job_free(c->job);
        conn_close(c);
        event_free(c->timer);
    }
    while ((j = TAILQ_FIRST(&p->queue)) != NULL) {
        job_dequeue(j);
        job_free(j);
    }
    for (int i = 0; i < p->n_migrations; i++)
        free(p->migration_sql[i]);
    free(p->migration_sql);
    free(p->applied);
    free(p->probe_sql);
    free(p->conns);
    for (int i = 0; i < p->n_params; i++)
        free(p->param_own[i]);
    pool_free_hosts(p);
    free(p->name);
    free(p->conninfo);
    free(p->geography);
    free(p);
}

void pgpool_query(struct pgpool *p, const char *sql, int nparams, const char *const *values,
                  pgpool_cb cb, void *arg)
{
    pgpool_query_until(p, 0, sql, nparams, values, cb, arg);
}

void pgpool_query_until(struct pgpool *p, int64_t deadline_ms, const char *sql, int nparams,
                        const char *const *values, pgpool_cb cb, void *arg)
{
    struct pgjob *j = xcalloc(1, sizeof *j);
    int64_t now = util_mono_ms();

    j->pool = p;
    j->sql = xstrdup(sql);
    j->nparams = nparams;
    j->values = xcalloc((size_t)nparams + 1, sizeof(char *));
    for (int i = 0; i < nparams; i++)
        j->values[i] = values[i] ? xstrdup(values[i]) : NULL;
    j->cb = cb;
    j->arg = arg;
    j->deadline_ms = deadline_ms;
    j->timer = event_new(p->base, -1, 0, job_on_timer, j);
    if (!j->timer) {
        log_error("event=event_new_failed");
        abort();
    }
    if (deadline_ms && deadline_ms <= now) {
        job_fail_soon(j, "the caller's deadline had passed");
        return;
    }
    if (p->setup_error && (p->setup != SETUP_DONE || !pool_has_usable_conn(p))) {
        job_fail_soon(j, p->setup_error);
        return;
    }
    if (!pool_has_live_conn(p)) {
        job_fail_soon(j, "database unreachable");
        return;
    }
    if (p->queue_len >= p->max_queue) {
        job_fail_soon(j, "database queue full");
        return;
    }
    job_enqueue(p, j, false);
    pool_dispatch(p);
}

bool pgpool_is_ready(const struct pgpool *p)
{
    return p->setup == SETUP_DONE && pool_has_usable_conn(p);
}

const char *pgpool_state_word(const struct pgpool *p)
{
    if (pgpool_is_ready(p))
        return "ok";
    if (p->setup_error)
        return p->setup_error;
    if (!p->ever_ready && pool_has_live_conn(p))
        return "connecting";
    return "unreachable";
}

const char *pgpool_name(const struct pgpool *p)
{
    return p->name;
}
