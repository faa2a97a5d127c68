/*
 * ts.h - support library for the integration tests (stampcp_testsupport).
 *
 * Tests drive the real binaries over real sockets against real PostgreSQL and
 * Redis. Everything here is blocking and bounded: every wait has a deadline,
 * every process a test starts is registered and killed at exit (also when a
 * test fails or the binary is interrupted), and every database it creates has
 * a unique name so tests can run in parallel.
 *
 * Failure policy: helpers that cannot do their job (a database that cannot be
 * created, a daemon that never becomes healthy) fail the running cmocka test
 * through ts_fail(), which prints why first. Outside a test they exit(1).
 *
 * Memory: responses and strings handed out by the helpers are owned by the
 * library and released by ts_finish(), so a failing assertion (which longjmps
 * out of the test) leaks nothing LeakSanitizer would report.
 */
#ifndef STAMPCP_TS_H
#define STAMPCP_TS_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ------------------------------------------------------------------ */
/* Lifecycle and environment (ts_env.c)                               */
/* ------------------------------------------------------------------ */

/*
 * Must be called first in main(). Checks the required environment
 * (STAMPCP_SOURCE_DIR, STAMPCP_BIN_DIR, STAMPCP_TEST_PG, STAMPCP_TEST_REDIS,
 * STAMPCP_TEST_TMP: a missing one exits 1, never skips), creates the per-test
 * scratch dir and installs the atexit/signal cleanup.
 */
void ts_init(const char *test_name);
/*
 * Call with cmocka's result (number of failed tests). Stops the daemons that
 * are still running (SIGTERM, then SIGKILL), scans their logs for sanitizer
 * reports (any one fails the run), dumps log tails on failure, drops the
 * databases and removes the scratch dir on success. Returns the exit code.
 */
int ts_finish(int failed);

/* A required environment variable; exits 1 with a message when unset or empty. */
const char *ts_env(const char *name);
const char *ts_test_name(void);
/* The per-test scratch directory: $STAMPCP_TEST_TMP/<test>_<pid>. */
const char *ts_tmp(void);
/* "t_<test>_<pid>_<suffix>": unique lowercase name for databases and dirs. Library-owned. */
const char *ts_unique(const char *suffix);

/* Print a line "[test +12.345s] ..." to stderr. */
void ts_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print the message and fail the running test (exit 1 outside a test). */
void ts_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* A printf into library-owned memory (freed by ts_finish). */
char *ts_str(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Like ts_str, then every ' becomes " so JSON can be written as "{'id':'eu'}". */
char *ts_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Remember p (malloc'd) and free it in ts_finish. Returns p. */
void *ts_keep(void *p);

int64_t ts_now_ms(void);
void ts_sleep_ms(int ms);
/*
 * Poll fn(arg) every 50 ms until it returns true or timeout_ms passes.
 * Returns whether it became true. fn is called at least once.
 */
bool ts_wait_until(bool (*fn)(void *arg), void *arg, int timeout_ms);

/* A currently free TCP port on 127.0.0.1 (bind to port 0 and ask the kernel). */
int ts_free_port(void);

/* Files. ts_read_file returns library-owned memory, NULL if unreadable. */
char *ts_read_file(const char *path, size_t *len);
void ts_write_file(const char *path, const char *content);
bool ts_file_contains(const char *path, const char *needle);
/* The test's KEK file (common/envelope.h): <ts_tmp()>/kek.json, mode 0600,
 * one fresh key, made on first use. Every daemon config the support writes
 * names it ("kekFile"); a test writing its own config adds it too. */
const char *ts_kek_file(void);

/* ------------------------------------------------------------------ */
/* HTTP/1.1 client (ts_http.c)                                        */
/* ------------------------------------------------------------------ */

struct ts_resp {
    int status;          /* 0: transport error or timeout, see err */
    char err[160];
    size_t nheaders;
    char **hname;
    char **hvalue;
    char *body;          /* NUL-terminated (the NUL is not counted in body_len) */
    size_t body_len;
    json_t *json;        /* the parsed body when it is JSON, else NULL */
    int64_t elapsed_ms;
};

/* Per-request deadline (connect + send + full answer); default 10000 ms. */
void ts_http_set_timeout(int ms);

/*
 * Send one request to 127.0.0.1:port with "Connection: close" and read the
 * whole answer (Content-Length, chunked, or until close). headers is a
 * NULL-terminated list of "Name: value" lines (may be NULL); Host, Connection
 * and, when body != NULL, Content-Length are added. Returns a library-owned
 * response (never NULL).
 */
struct ts_resp *ts_http(int port, const char *method, const char *path,
                        const char *const *headers, const void *body, size_t body_len);
/* Send the bytes as they are (for malformed requests) and read the answer. */
struct ts_resp *ts_http_raw(int port, const void *bytes, size_t len);

/*
 * TLS. ts_http_use_tls(port, ca): from now on ts_http, ts_http_raw and
 * ts_rt_post_mt speak TLS to that port, verifying the server certificate
 * against ca (and the address 127.0.0.1). ts_controlplane_spawn registers the
 * control plane's port this way. Call from the main thread, before worker
 * threads run. ts_http_forget_tls: plain again.
 */
void ts_http_use_tls(int port, const char *ca_file);
void ts_http_forget_tls(int port);

enum ts_http_tls { TS_HTTP_AUTO = 0, TS_HTTP_PLAIN, TS_HTTP_TLS };
struct ts_http_opts {
    enum ts_http_tls tls;   /* AUTO: as the port is registered; TLS is implied by ca or cert */
    const char *ca;         /* trust (NULL with TLS: the system store) */
    const char *cert;       /* client certificate chain (PEM), or NULL */
    const char *key;        /* its key (NULL: in cert) */
};
/* ts_http with per-call transport options (o NULL: as ts_http). A failed
 * handshake is status 0 with err "tls: ...". */
struct ts_resp *ts_http_ex(int port, const struct ts_http_opts *o, const char *method, const char *path,
                           const char *const *headers, const void *body, size_t body_len);

/*
 * A keep-alive connection (TLS per o, as ts_http_ex): requests are sent with
 * "Connection: keep-alive" one at a time on the same socket. Open fails the
 * test when the connection or handshake fails; a request that fails closes it
 * (status 0). ts_conn_close frees it (ts_finish does not).
 */
struct ts_conn;
struct ts_conn *ts_conn_open(int port, const struct ts_http_opts *o);
struct ts_resp *ts_conn_request(struct ts_conn *c, const char *method, const char *path,
                                const char *const *headers, const void *body, size_t body_len);
/* SHA-256 (hex) of the server certificate this connection's handshake got; NULL without TLS. */
const char *ts_conn_peer_fingerprint(struct ts_conn *c);
void ts_conn_close(struct ts_conn *c);
/* SHA-256 (hex) of the first certificate in a PEM file (library-owned). */
const char *ts_cert_fingerprint(const char *pem_path);
/*
 * Thread-safe raw exchange (for ts_rt_post_mt): connect (TLS when the port is
 * registered), send req, read until EOF, outcap or timeout into out
 * (NUL-terminated). False with err on connect/TLS failure or timeout.
 */
bool ts_http_exchange_mt(int port, const char *req, size_t reqlen, int timeout_ms, char *out, size_t outcap,
                         size_t *outlen, char *err, size_t errlen);
/* Free a response early (optional: ts_finish frees the rest). */
void ts_resp_free(struct ts_resp *r);

/* Header value by name (case-insensitive), NULL when absent. */
const char *ts_header(const struct ts_resp *r, const char *name);
/* Whether a Retry-After value is the jittered form of `base` seconds
 * (util_retry_after_s: an integer in base .. base + max(1, base/2)). */
bool ts_retry_after_is(const char *value, long base);
/* Fail unless r carries a Retry-After that is the jittered form of base. */
void ts_expect_retry_after(const struct ts_resp *r, long base);
/* error.code / error.target / error.message of an error body, NULL when absent. */
const char *ts_err_code(const struct ts_resp *r);
const char *ts_err_target(const struct ts_resp *r);
/* A string member of a JSON object (NULL if obj is not an object or the member is not a string). */
const char *ts_jstr(const json_t *obj, const char *key);
/* An integer member, or def when absent / not an integer. */
json_int_t ts_jint(const json_t *obj, const char *key, json_int_t def);
/* Whether the body is the documented error shape {"error":{"code":..,"message":..}}. */
bool ts_is_error_body(const struct ts_resp *r);
/* One-line summary for assertion messages: "409 {...body...}" (library-owned). */
const char *ts_resp_str(const struct ts_resp *r);

/*
 * Assertions that print the whole answer when they fail (cmocka's own macros
 * only show the two numbers). They fail the running test via ts_fail.
 */
#define TS_EXPECT_STATUS(resp, st) \
    ts_expect_status((resp), (st), __FILE__, __LINE__)
/* status, a well-formed error body and error.code == code */
#define TS_EXPECT_ERROR(resp, st, code) \
    ts_expect_error((resp), (st), (code), __FILE__, __LINE__)
#define TS_EXPECT_STREQ(actual, expected) \
    ts_expect_streq((actual), (expected), #actual, __FILE__, __LINE__)
void ts_expect_status(const struct ts_resp *r, int status, const char *file, int line);
void ts_expect_error(const struct ts_resp *r, int status, const char *code, const char *file, int line);
void ts_expect_streq(const char *actual, const char *expected, const char *what, const char *file, int line);

/* Percent-encode s for use in a query string (library-owned). */
const char *ts_urlencode(const char *s);

/* Parse an RFC 3339 timestamp to ms since the epoch; -1 if it is not one (UTC: Z or +00:00). */
int64_t ts_parse_rfc3339(const char *s);

/* ------------------------------------------------------------------ */
/* Processes (ts_proc.c)                                              */
/* ------------------------------------------------------------------ */

struct ts_proc {
    pid_t pid;
    char name[64];
    char log_path[512];  /* stdout (and stderr unless err_path is set) */
    char err_path[512];  /* stderr when separate, else "" */
    bool reaped;
    int wstatus;         /* waitpid status once reaped */
};

/*
 * fork/exec argv[0] (a path) with stdout/stderr appended to log_path (NULL:
 * <tmp>/<name>.log) and stderr to err_path when not NULL. The child gets
 * PR_SET_PDEATHSIG(SIGKILL) so it cannot outlive a test killed by ctest.
 * The process is registered: ts_finish / exit kills it if still running.
 */
struct ts_proc *ts_proc_spawn(const char *name, char *const argv[],
                              const char *log_path, const char *err_path);
bool ts_proc_alive(struct ts_proc *p);
void ts_proc_kill(struct ts_proc *p, int sig);
/* Wait up to timeout_ms for exit; true if it exited (status in wstatus). */
bool ts_proc_wait(struct ts_proc *p, int timeout_ms);
/* Exit code once exited normally; -1 if still running or killed by a signal. */
int ts_proc_exit_code(const struct ts_proc *p);
/* Signal number that ended it, 0 otherwise. */
int ts_proc_term_signal(const struct ts_proc *p);
/* Print the last max_bytes of the process's log(s) to stderr. */
void ts_proc_dump_log(const struct ts_proc *p, size_t max_bytes);
/* Whether the log (or separate stderr file) contains needle. */
bool ts_proc_log_contains(const struct ts_proc *p, const char *needle);
/* How many times the log (plus the separate stderr file) contains needle. */
int ts_proc_log_count(const struct ts_proc *p, const char *needle);

/*
 * Run a command to completion (stdout+stderr captured into *output,
 * library-owned, when output != NULL). Returns the exit code, or -1 if it
 * had to be killed after timeout_ms or died from a signal.
 */
int ts_run(char *const argv[], int timeout_ms, char **output);

/* ------------------------------------------------------------------ */
/* PostgreSQL (ts_pg.c)                                               */
/* ------------------------------------------------------------------ */

/* base conninfo with dbname replaced (library-owned). */
const char *ts_pg_conninfo_db(const char *base, const char *dbname);
/* Connect (connect_timeout=5) or fail the test. Caller PQfinish()es. */
PGconn *ts_pg_connect(const char *conninfo);
/* Create database name on the server of admin_conninfo; dropped at ts_finish. Returns its conninfo. */
const char *ts_pg_create_db(const char *admin_conninfo, const char *name);
void ts_pg_drop_db(const char *admin_conninfo, const char *name);
/* Run sql (must succeed) and return the result; caller PQclear()s. */
PGresult *ts_pg_query(const char *conninfo, const char *sql);
/* First column of the first row (library-owned), NULL for no row or SQL NULL. */
const char *ts_pg_scalar(const char *conninfo, const char *sql);
long ts_pg_count(const char *conninfo, const char *sql);
bool ts_pg_table_exists(const char *conninfo, const char *table);
/*
 * A LOGIN role (NOSUPERUSER, nothing granted) on the server of
 * admin_conninfo, with password; dropped at ts_finish (after DROP OWNED BY in
 * grant_db, a superuser conninfo of the database it gets privileges in, or
 * NULL). Role names are cluster-wide: make them unique (e.g. with the pid).
 */
void ts_pg_create_role(const char *admin_conninfo, const char *role, const char *password, const char *grant_db);
/* base conninfo with user and password replaced (values quoted; library-owned). */
const char *ts_pg_conninfo_user(const char *base, const char *user, const char *password);
/* Run sql as conninfo; returns the SQLSTATE of its error, or NULL when it
 * succeeded (*ntuples: rows returned or affected, when not NULL). */
const char *ts_pg_try(const char *conninfo, const char *sql, long *ntuples);

/* ------------------------------------------------------------------ */
/* Private PostgreSQL / Redis servers (ts_servers.c)                  */
/* ------------------------------------------------------------------ */

struct ts_pgserver {
    char dir[512];
    int port;
    char conninfo[256];  /* superuser, dbname=postgres */
    bool running;
    bool paused;         /* SIGSTOPped by ts_pgserver_signal (cleanup continues it first) */
};

/* infra/pg-server init + start on a free port; waits until it accepts connections. */
struct ts_pgserver *ts_pgserver_start(const char *name);
/* infra/pg-server stop DIR mode ("fast" or "immediate"). */
void ts_pgserver_stop(struct ts_pgserver *s, const char *mode);
/* Start again on the same port and wait until it accepts connections. */
void ts_pgserver_restart(struct ts_pgserver *s);
/* A hot standby of primary (pg_basebackup, streaming, standby.signal) on a free port, started. */
struct ts_pgserver *ts_pgserver_start_standby(const char *name, const struct ts_pgserver *primary);
/*
 * The slow DNS server (tests/support/slowdns.py) on a free loopback port,
 * answering A queries for name with 127.0.0.1 after delay_ms. Returns the
 * path of a resolv.conf naming only it (one attempt, timeout 10 s: slow, not
 * lost), for "dns.resolvConf"; *log_path (may be NULL) gets its log, where
 * each query is a line "<ms> query 1 <name>".
 */
const char *ts_slowdns_start(const char *name, int delay_ms, const char **log_path);
/* Queries for name's A record in a slowdns log so far. */
int ts_slowdns_queries(const char *log_path, const char *name);
/* pg_ctl promote, waiting until it accepts writes. */
void ts_pgserver_promote(struct ts_pgserver *s);
/* Send sig to every process of the server (postmaster first for SIGSTOP, last
 * for SIGCONT); returns how many processes got it. SIGSTOP/SIGCONT set paused. */
int ts_pgserver_signal(struct ts_pgserver *s, int sig);
/* The postmaster's pid (postmaster.pid), or -1. */
pid_t ts_pgserver_postmaster(const struct ts_pgserver *s);

struct ts_redis {
    char dir[512];
    int port;
    char addr[64];       /* 127.0.0.1:PORT */
    bool running;
    char aclfile[512];   /* "" or the users file it loads (also on restart) */
};

struct ts_redis *ts_redis_start(const char *name);
/* The same with ACL users from aclfile (redis-server-ctl --aclfile; see infra/redis-acl-users). */
struct ts_redis *ts_redis_start_acl(const char *name, const char *aclfile);
void ts_redis_stop(struct ts_redis *r);
void ts_redis_restart(struct ts_redis *r);
/* Run one Redis command (argv-style); returns the reply as a string (library-owned) or NULL. */
const char *ts_redis_cmd(const char *addr, const char *fmt, ...);
/* ts_redis_cmd after "AUTH password" (a refused AUTH answers its error). */
const char *ts_redis_cmd_auth(const char *addr, const char *password, const char *fmt, ...);
/* Clients of the Redis at addr that are the daemons' (CLIENT LIST without
 * Sentinel's "sentinel-..." connections, replication links and this query). */
int ts_redis_daemon_clients(const char *addr);

/* ------------------------------------------------------------------ */
/* TCP proxy (ts_tcpproxy.c): network failures between a daemon and   */
/* a server                                                           */
/* ------------------------------------------------------------------ */

/*
 * A relay on a free 127.0.0.1 port to one IPv4:PORT target, run by a thread
 * of the test process (poll). Give a daemon its address instead of the
 * server's, then switch modes at any time:
 *
 *   PASS   relay both ways (the start);
 *   CUT    close every relayed connection, and close new ones at once
 *          (what a daemon sees when the server or its host goes away);
 *   STALL  keep every connection open and accept new ones (connected to the
 *          target), but relay no byte either way: a silent partition, no FIN,
 *          no RST; the daemon can only notice by its own deadlines.
 *   HOLD   as STALL, but a connection accepted now reaches the target only
 *          when PASS comes back (the target sees nothing before: its own idle
 *          timeouts can't end it), so a request can be held for a while and
 *          then served.
 *
 * Back to PASS relays again: what was held in a stall is delivered then.
 * ts_tcpproxy_set_mode returns once the thread has applied the mode. At most
 * 64 connections at once (more are closed). Stopped and freed by ts_finish
 * (ts_tcpproxy_stop earlier is optional). Test thread only.
 */
enum ts_proxy_mode { TS_PROXY_PASS, TS_PROXY_CUT, TS_PROXY_STALL, TS_PROXY_HOLD };
struct ts_tcpproxy;
struct ts_tcpproxy *ts_tcpproxy_start(const char *target_ipv4_port);
/* "127.0.0.1:PORT" (owned by the proxy). */
const char *ts_tcpproxy_addr(const struct ts_tcpproxy *p);
void ts_tcpproxy_set_mode(struct ts_tcpproxy *p, enum ts_proxy_mode mode);
/* Relayed connections open now; connections accepted since the start. */
int ts_tcpproxy_live(struct ts_tcpproxy *p);
long ts_tcpproxy_accepted(struct ts_tcpproxy *p);
/* Close everything and stop the thread. */
void ts_tcpproxy_stop(struct ts_tcpproxy *p);

/* ------------------------------------------------------------------ */
/* The daemons under test (ts_daemons.c)                              */
/* ------------------------------------------------------------------ */

#define TS_MAX_GEOS 8

struct ts_cp_opts {
    const char *name;                 /* log/config file stem; default "controlplane" */
    const char *global_db;            /* conninfo; NULL: a fresh DB on STAMPCP_TEST_PG */
    const char *geo_ids[TS_MAX_GEOS]; /* NULL-terminated; all NULL: {"us","eu"} */
    const char *geo_dbs[TS_MAX_GEOS]; /* conninfo per geography; NULL: a fresh DB */
    const char *redis;                /* host:port; NULL: STAMPCP_TEST_REDIS */
    int stale_after;                  /* staleAfterIntervals; 0: omitted */
    int down_after;                   /* downAfterIntervals; 0: omitted */
    const char *extra_json;           /* extra members, e.g. "\"maxBodyBytes\":65536" */
    bool no_wait;                     /* don't wait for /healthz */
    /* Transport (default: HTTPS with the test PKI's server certificate, ts_pki_ca()). */
    bool plain_http;                  /* "plainHttp": true instead of "tls" */
    const char *tls_cert, *tls_key;   /* tls.cert / tls.key; NULL: ts_pki_server() */
    const char *tls_ca;               /* the CA clients trust for it; NULL: ts_pki_ca() */
    const char *client_ca;            /* tls.clientCa (mTLS); NULL: omitted */
    const char *kek_file;             /* "kekFile"; NULL: ts_kek_file() */
    const char *redis_sentinel;       /* "redisSentinel" object as raw JSON (instead of "redis"), or NULL */
    const char *resolv_conf;          /* "dns": {"resolvConf"}; NULL: the system's */
};

struct ts_cp {
    struct ts_proc *proc;   /* NULL until spawned */
    char name[64];
    int port;
    char token[64];
    char config_path[512];
    const char *global_db;
    const char *geo_ids[TS_MAX_GEOS];
    const char *geo_dbs[TS_MAX_GEOS];
    const char *redis;
    const char *redis_sentinel; /* raw JSON "redisSentinel" object, or NULL */
    bool tls;               /* HTTPS: ts_http & co. speak TLS to port, trusting ca */
    const char *ca;         /* the CA that signed its certificate (NULL with plain HTTP) */
    const char *tls_cert, *tls_key;
    const char *client_ca;
};

/* Write the config, start the daemon on a free port, wait (20 s) for /healthz 200. */
struct ts_cp *ts_controlplane_start(const struct ts_cp_opts *o);
/*
 * Two-phase start for tests that need several daemons to start at the same
 * moment: prepare writes the config and picks the port (no process yet),
 * spawn forks it without waiting.
 */
struct ts_cp *ts_controlplane_prepare(const struct ts_cp_opts *o);
void ts_controlplane_spawn(struct ts_cp *cp);
/* Wait (timeout_ms) for /readyz 200. */
bool ts_controlplane_wait_ready(struct ts_cp *cp, int timeout_ms);
/* SIGTERM, wait up to timeout_ms; returns the exit code (-1: signal/timeout, then SIGKILLed). */
int ts_controlplane_stop(struct ts_cp *cp, int timeout_ms);

/* Admin call with the bearer token; json_body may be NULL (then no Content-Type). */
struct ts_resp *ts_admin(struct ts_cp *cp, const char *method, const char *path, const char *json_body);
/* Admin call with raw body bytes (n of them) and Content-Type ctype (NULL: none). */
struct ts_resp *ts_admin_raw(struct ts_cp *cp, const char *method, const char *path, const char *ctype,
                             const void *body, size_t n);
/* POST as the operator; fails the test unless the answer is 201. */
void ts_admin_post201(struct ts_cp *cp, const char *path, const char *json_body);
/* POST a geography, a region in it and a stamp in that (each must be 201). */
void ts_admin_post_stamp(struct ts_cp *cp, const char *geography, const char *region, const char *stamp);
/* Fails the test (naming what) unless r is status with a JSON error body of that code. */
void ts_expect_err(struct ts_resp *r, int status, const char *code, const char *what);
/* A call with Authorization: Bearer <bearer> (NULL: no Authorization). */
struct ts_resp *ts_call(struct ts_cp *cp, const char *bearer, const char *method, const char *path,
                        const char *json_body);
/* POST /v1/api-keys as bearer (NULL: the operator token) for tenant (NULL: a
 * platform key) with scopes_json (e.g. "[\"devices:read\"]"); must be 201.
 * Returns the key (library-owned); *id_out (may be NULL) gets its id. */
const char *ts_api_key(struct ts_cp *cp, const char *bearer, const char *tenant, const char *scopes_json,
                       const char **id_out);
/* A GET without token (probes). */
struct ts_resp *ts_get(struct ts_cp *cp, const char *path);

struct ts_agent_opts {
    const char *stamp_id;
    const char *region;
    const char *redis;                /* NULL: STAMPCP_TEST_REDIS */
    const char *redis_sentinel;       /* "redisSentinel" object as raw JSON (instead of "redis"), or NULL */
    const char *resolv_conf;          /* "dns": {"resolvConf"}; NULL: the system's */
    int interval_ms;                  /* 0: 200 */
    const char *dps[4];               /* NULL-terminated */
    const char *hubs[4];
};

/* Write the agent config and start it; waits until the process has been alive 200 ms. */
struct ts_proc *ts_agent_start(const struct ts_agent_opts *o);

/* Path of a binary in STAMPCP_BIN_DIR (library-owned). */
const char *ts_bin(const char *name);

/* ------------------------------------------------------------------ */
/* Router tests (ts_router.c): layouts, tenants, device credentials,  */
/* concurrent device requests                                         */
/* ------------------------------------------------------------------ */

#define TS_RT_MAX 16
#define TS_RT_MAX_CP 4

struct ts_rt_dps {
    const char *id;           /* NULL ends the list */
    long max_registrations;   /* 0: the default */
    long per_minute;          /* registrationsPerMinute; 0: the default */
};

struct ts_rt_hub {
    const char *id;           /* NULL ends the list */
    long max_devices;         /* 0: the default */
};

struct ts_rt_stamp {
    const char *id;           /* NULL ends the list */
    const char *region;
    const char *tenancy;      /* NULL: pooled */
    struct ts_rt_dps dps[4];
    struct ts_rt_hub hubs[4];
    struct ts_proc *agent;    /* set by ts_rt_agent_start */
};

struct ts_rt_region {
    const char *id;           /* NULL ends the list */
    const char *geography;
};

struct ts_rt_layout {
    const char *geographies[TS_MAX_GEOS];   /* NULL-terminated */
    struct ts_rt_region regions[TS_RT_MAX];
    struct ts_rt_stamp stamps[TS_RT_MAX];
};

struct ts_rt_opts {
    int ncp;                                /* control planes on the same databases; 0: 1 */
    const char *geos[TS_MAX_GEOS];          /* configured geographies; all NULL: {"us","eu"} */
    const char *extra_json;                 /* extra config members (besides layoutRefreshMs) */
    int layout_refresh_ms;                  /* 0: 200 */
    /* transport of the control planes, as struct ts_cp_opts (default: HTTPS, test PKI) */
    const char *tls_cert, *tls_key, *tls_ca;
    bool plain_http;                        /* "plainHttp": true (for load generators without TLS) */
    /* HA tests: databases elsewhere (NULL: fresh ones on STAMPCP_TEST_PG), and
     * the "redisSentinel" object as raw JSON for the control planes and agents
     * (then no private Redis is started: rt->redis is NULL) */
    const char *global_db;
    const char *geo_dbs[TS_MAX_GEOS];       /* in the order of geos */
    const char *redis_sentinel;
    /* control plane i reaches the private Redis only through a TCP proxy
     * (rt->redis_proxy[i], ts_tcpproxy_start), so a test can cut or stall it */
    bool redis_proxied[TS_RT_MAX_CP];
};

struct ts_rt {
    struct ts_redis *redis;                 /* private to the test: no shared keys or channels; NULL with redis_sentinel */
    const char *redis_sentinel;             /* as given in ts_rt_opts */
    struct ts_cp *cp[TS_RT_MAX_CP];
    int ncp;
    int layout_refresh_ms;
    struct ts_rt_layout *layout;            /* the last one registered */
    struct ts_tcpproxy *redis_proxy[TS_RT_MAX_CP];   /* per ts_rt_opts.redis_proxied, else NULL */
};

/*
 * A private Redis, then ncp control planes sharing one global and one
 * database per geography (staleAfterIntervals 3, downAfterIntervals 10,
 * layoutRefreshMs 200), all ready.
 */
struct ts_rt *ts_rt_start(const struct ts_rt_opts *o);
/* Conninfo of a geography's database. */
const char *ts_rt_geo_db(const struct ts_rt *rt, const char *geo);
/* POST every geography, region, stamp, DPS instance and hub of l through cp[0]. */
void ts_rt_register_layout(struct ts_rt *rt, struct ts_rt_layout *l);
/* The idScope / endpoint / hub host name ts_rt_register_layout gives a DPS or hub id. */
const char *ts_rt_id_scope(const char *dps_id);
const char *ts_rt_endpoint(const char *dps_id);
/* Start the stamp's agent (200 ms reports, its DPS and hub ids) on the private Redis. */
struct ts_proc *ts_rt_agent_start(struct ts_rt *rt, struct ts_rt_stamp *s);
/* Start every stamp's agent, wait until every control plane sees all healthy and the layout. */
void ts_rt_start_agents(struct ts_rt *rt);
/* The standard fleet: ts_rt_start with ncp control planes for l's geographies (the rest defaults),
 * ts_rt_register_layout(l), ts_rt_start_agents. */
struct ts_rt *ts_rt_start_fleet(struct ts_rt_layout *l, int ncp);
/* The stamp's health as cp sees it (GET /v1/stamps/{id}). */
const char *ts_rt_health(struct ts_cp *cp, const char *stamp);
/* Wait until every control plane reports the health word for stamp. */
bool ts_rt_wait_health(struct ts_rt *rt, const char *stamp, const char *health, int timeout_ms);
/* Sleep long enough for every control plane to re-read the layout (2 refreshes + a margin). */
void ts_rt_wait_layout(const struct ts_rt *rt);
/* Find a stamp of the registered layout (NULL if none). */
struct ts_rt_stamp *ts_rt_find_stamp(struct ts_rt *rt, const char *id);
/* The stamp that owns a DPS id in the registered layout (NULL if none). */
struct ts_rt_stamp *ts_rt_stamp_of_dps(struct ts_rt *rt, const char *dps_id);

struct ts_tenant {
    char id[64];
    char key_b64[64];           /* enrollmentKey as returned */
    unsigned char key[64];
    int keylen;
    json_t *json;               /* the 201 body (library-owned) */
};

/* POST /v1/tenants with body (must answer 201 with an enrollmentKey). */
struct ts_tenant *ts_rt_tenant(struct ts_cp *cp, const char *json_body);
/* The standard tenant of the router tests: ts_rt_tenant with TS_RT_ACME_JSON
 * (id "acme", name "Acme", resident in geography "eu"). */
#define TS_RT_ACME_JSON "{\"id\":\"acme\",\"name\":\"Acme\",\"residency\":{\"geographies\":[\"eu\"]}}"
struct ts_tenant *ts_rt_tenant_acme(struct ts_cp *cp);
/* Fail (naming when, e.g. "after the kill") unless every dps_usage row of the
 * geography database counts exactly the 'assigned' devices of its DPS. */
void ts_rt_expect_usage_matches(const char *geo_db, const char *when);
/* The standard fleet with the standard tenant: ts_rt_start_fleet(l, ncp), then
 * ts_rt_tenant_acme through cp[0] into *acme. */
struct ts_rt *ts_rt_start_fleet_acme(struct ts_rt_layout *l, int ncp, struct ts_tenant **acme);
/* ts_rt_start_fleet with the options o (its geos, when all NULL, are l's
 * geographies): ts_rt_start, ts_rt_register_layout(l), ts_rt_start_agents. */
struct ts_rt *ts_rt_start_fleet_with(const struct ts_rt_opts *o, struct ts_rt_layout *l);
/* Make j the first locate of regid by tenant t (its own SAS token) at port. */
struct ts_rt_job;
void ts_rt_job_locate(struct ts_rt_job *j, int port, const struct ts_tenant *t, const char *regid);
/* An installer token of the tenant (POST .../installer-tokens), the bare token. */
const char *ts_rt_installer_token(struct ts_cp *cp, const char *tenant_id);

/*
 * Device SAS "SharedAccessSignature sr=...&sig=...&skn=registration&se=..."
 * (library-owned): deviceKey = HMAC(enrollment key, regid), signed over
 * "{tenant}/registrations/{regid}". expiry: Unix seconds, 0: now + 3600.
 */
const char *ts_rt_sas(const struct ts_tenant *t, const char *regid, int64_t expiry);
/* The same with an explicit sr (signed as given) and key derivation id. */
const char *ts_rt_sas_custom(const unsigned char *key, size_t keylen, const char *derive_regid,
                             const char *sr, int64_t expiry, const char *skn);
/* "Authorization: <value>" (library-owned) */
const char *ts_rt_authz(const char *value);

/*
 * POST /v1/tenants/{tenant}/registrations/{regid}/{verb} (verb: locate,
 * reprovision) with an Authorization value (NULL: none) and optional body.
 */
struct ts_resp *ts_rt_device(struct ts_cp *cp, const char *verb, const char *tenant_id, const char *regid,
                             const char *authz_value, const char *body);
/* locate with the device's own SAS token */
struct ts_resp *ts_rt_locate(struct ts_cp *cp, const struct ts_tenant *t, const char *regid);

/* ---- concurrent requests (thread-safe: no library-owned memory) ---- */

struct ts_rt_answer {
    int status;               /* 0: transport error */
    char retry_after[16];     /* "" when absent */
    char body[1536];
    int64_t at_ms;            /* ts_now_ms() when the answer was complete */
    int64_t sent_ms;          /* ts_now_ms() when the request was started (latency: at_ms - sent_ms) */
};

struct ts_rt_job {
    int port;
    const char *path;
    const char *authz;        /* Authorization value (NULL: none) */
    const char *body;         /* NULL: none */
    struct ts_rt_answer ans;
    bool done;
};

/* One POST, thread-safe, blocking, with its own deadline (timeout_ms). */
void ts_rt_post_mt(int port, const char *path, const char *authz, const char *body, int timeout_ms,
                   struct ts_rt_answer *out);

struct ts_rt_batch;
/*
 * Run jobs[0..n) on nthreads threads (each takes the next job), starting
 * once every thread is ready. ts_rt_batch_stop makes the threads take no new
 * job; ts_rt_batch_wait joins them and frees the batch.
 */
struct ts_rt_batch *ts_rt_batch_start(struct ts_rt_job *jobs, int n, int nthreads);
void ts_rt_batch_stop(struct ts_rt_batch *b);
void ts_rt_batch_wait(struct ts_rt_batch *b);
/* Start + wait. */
void ts_rt_run_jobs(struct ts_rt_job *jobs, int n, int nthreads);
/* The answer's JSON body (library-owned, main thread only), NULL if not JSON. */
json_t *ts_rt_answer_json(const struct ts_rt_answer *a);
/* error.code of an answer (library-owned), NULL when absent. */
const char *ts_rt_answer_code(const struct ts_rt_answer *a);

/* ------------------------------------------------------------------ */
/* HA engines (ts_ha.c): Patroni + etcd, Redis + Sentinel             */
/* ------------------------------------------------------------------ */

/* Two PostgreSQL 15 servers managed by Patroni over one etcd
 * (infra/patroni-cluster): a leader and a synchronous standby. */
struct ts_patroni {
    char dir[512];
    char conninfo[512];   /* superuser, dbname=postgres, both hosts, target_session_attrs=read-write */
    char pg_ports[64];    /* "P0,P1" */
};

/* Start (<tmp>/patroni-NAME) and wait for a leader with a streaming sync standby; stopped at ts_finish. */
struct ts_patroni *ts_patroni_start(const char *name);
/* CREATE DATABASE on the leader; its multi-host conninfo (library-owned). Gone with the cluster. */
const char *ts_patroni_create_db(struct ts_patroni *p, const char *name);
/* The leader's member name (library-owned), and its PostgreSQL port when pg_port != NULL. */
const char *ts_patroni_leader(struct ts_patroni *p, int *pg_port);
/* kill -9 the leader's postmaster; returns the member that was leader. */
const char *ts_patroni_kill_leader(struct ts_patroni *p);
/* patronictl switchover to the sync standby (returns when done); returns the new leader. */
const char *ts_patroni_switchover(struct ts_patroni *p);
/* Wait until there is again a leader with a streaming sync standby (fails the test after timeout_s). */
void ts_patroni_wait(struct ts_patroni *p, int timeout_s);
/* patronictl list (library-owned), for logs. */
const char *ts_patroni_status(struct ts_patroni *p);

/* A Redis master + replica under three Sentinels (infra/redis-sentinel-ctl). */
struct ts_sentinel {
    char dir[512];
    char sentinels[256];   /* "127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3" */
    char master_name[64];
    char pass_file[512];     /* the Sentinels' own password (requirepass), one line */
    char sentinel_json[1024]; /* {"masterName","sentinels":[...],"auth":{"passwordFile"}}: "redisSentinel" */
};

/* Start (<tmp>/sentinel-NAME), wait until the Sentinels agree; stopped at ts_finish. */
struct ts_sentinel *ts_sentinel_start(const char *name);
/* The Sentinels' password (from pass_file; library-owned). */
const char *ts_sentinel_password(struct ts_sentinel *s);
/* The master's HOST:PORT as the Sentinels name it (library-owned). */
const char *ts_sentinel_master(struct ts_sentinel *s);
/* kill -9 the master; returns its HOST:PORT. */
const char *ts_sentinel_kill_master(struct ts_sentinel *s);
/* Start the stopped server at addr again, empty, as a replica of the current master. */
void ts_sentinel_start_node(struct ts_sentinel *s, const char *addr);
/* kill -9 the master and start it again at once without data, before the
 * Sentinels notice (its replica resyncs from it): returns its HOST:PORT. */
const char *ts_sentinel_restart_empty(struct ts_sentinel *s);
/* Wait until the Sentinels agree on a master that has its replica (fails after timeout_s). */
void ts_sentinel_wait(struct ts_sentinel *s, int timeout_s);

/* A SUBSCRIBE to one channel on the Redis at addr (NULL if it cannot
 * connect); the caller closes it. ts_redis_sub_next: the next message's
 * payload (library-owned), or NULL after timeout_ms - after which the
 * subscription is dead (close it, subscribe again). */
struct ts_redis_sub;
struct ts_redis_sub *ts_redis_subscribe(const char *addr, const char *channel);
const char *ts_redis_sub_next(struct ts_redis_sub *s, int timeout_ms);
void ts_redis_sub_close(struct ts_redis_sub *s);

#endif
