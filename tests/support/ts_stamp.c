/*
 * ts_stamp.c - see ts_stamp.h: the stamp provisioning service under test,
 * its PKI, HTTPS through curl and the Node SDK clients of tests/sdk.
 */
#define _GNU_SOURCE 1
#include "ts_stamp.h"
#include "ts_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sas.h"

static const char *g_ca_crt, *g_ca_key, *g_srv_crt, *g_srv_key;
static json_t **g_jsons;
static size_t g_njsons, g_capjsons;
static bool g_cleanup_set;

static void free_jsons(void *arg)
{
    (void)arg;
    for (size_t i = 0; i < g_njsons; i++)
        json_decref(g_jsons[i]);
    free(g_jsons);
    g_jsons = NULL;
    g_njsons = g_capjsons = 0;
    g_cleanup_set = false;
}

json_t *ts_jkeep(json_t *j)
{
    if (!j)
        return NULL;
    if (!g_cleanup_set) {
        ts_on_cleanup(free_jsons, NULL);
        g_cleanup_set = true;
    }
    if (g_njsons == g_capjsons) {
        size_t cap = g_capjsons ? g_capjsons * 2 : 64;
        json_t **n = realloc(g_jsons, cap * sizeof *n);
        if (!n)
            abort();
        g_jsons = n;
        g_capjsons = cap;
    }
    g_jsons[g_njsons++] = j;
    return j;
}

const char *ts_jdump(const json_t *j)
{
    char *s;
    if (!j)
        return "null";
    s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
    return s ? ts_keep(s) : "(unprintable)";
}

static const char *find_prog(const char *prog, bool required)
{
    const char *path = getenv("PATH");
    char *copy = ts_str("%s", path ? path : "/usr/local/bin:/usr/bin:/bin");
    for (char *save = NULL, *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        const char *p = ts_str("%s/%s", dir, prog);
        if (access(p, X_OK) == 0)
            return p;
    }
    if (required)
        ts_fail("%s not found in PATH (the stamp SDK tests need node, npm, curl and openssl; "
                "install the Debian packages nodejs npm curl openssl)", prog);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* PKI                                                                */
/* ------------------------------------------------------------------ */

void ts_openssl(const char *what, char *const argv[])
{
    char *out = NULL;
    int rc = ts_run(argv, 60000, &out);
    if (rc != 0)
        ts_fail("openssl (%s) failed with %d: %s", what, rc, out ? out : "");
}

void ts_pki_make_ca(const char *name, const char *cn, const char **crt, const char **key)
{
    const char *ossl = find_prog("openssl", true);
    *crt = ts_str("%s/%s.crt", ts_tmp(), name);
    *key = ts_str("%s/%s.key", ts_tmp(), name);
    char *argv[] = { (char *)ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", (char *)*key,
                     "-out", (char *)*crt, "-days", "2", "-subj", (char *)ts_str("/CN=%s", cn), "-addext",
                     "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     NULL };
    ts_openssl(name, argv);
}

static void sign_leaf(const char *name, const char *cn, const char *ext_text, const char *ca_crt,
                      const char *ca_key, const char **crt, const char **key)
{
    const char *ossl = find_prog("openssl", true);
    const char *csr = ts_str("%s/%s.csr", ts_tmp(), name);
    const char *ext = ts_str("%s/%s.ext", ts_tmp(), name);
    *crt = ts_str("%s/%s.crt", ts_tmp(), name);
    *key = ts_str("%s/%s.key", ts_tmp(), name);
    {
        char *argv[] = { (char *)ossl, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", (char *)*key,
                         "-out", (char *)csr, "-subj", (char *)ts_str("/CN=%s", cn), NULL };
        ts_openssl(ts_str("%s CSR", name), argv);
    }
    ts_write_file(ext, ext_text);
    {
        char *argv[] = { (char *)ossl, "x509", "-req", "-in", (char *)csr, "-CA", (char *)ca_crt, "-CAkey",
                         (char *)ca_key, "-CAcreateserial", "-CAserial", (char *)ts_str("%s/%s.srl", ts_tmp(), name),
                         "-out", (char *)*crt, "-days", "2", "-sha256", "-extfile", (char *)ext, NULL };
        ts_openssl(ts_str("%s certificate", name), argv);
    }
}

void ts_pki_make_leaf(const char *name, const char *cn, const char *ca_crt, const char *ca_key,
                      const char **crt, const char **key)
{
    sign_leaf(name, cn,
              "basicConstraints=CA:FALSE\n"
              "keyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=clientAuth\n",
              ca_crt, ca_key, crt, key);
}

const char *ts_pki_ca(void)
{
    if (g_ca_crt)
        return g_ca_crt;
    ts_pki_make_ca("test-ca", "stampcp stamp test CA", &g_ca_crt, &g_ca_key);
    sign_leaf("dps-server", "127.0.0.1",
              "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
              "basicConstraints=CA:FALSE\n"
              "keyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=serverAuth\n",
              g_ca_crt, g_ca_key, &g_srv_crt, &g_srv_key);
    setenv("NODE_EXTRA_CA_CERTS", g_ca_crt, 1);
    return g_ca_crt;
}

void ts_pki_make_server(const char *name, const char **crt, const char **key)
{
    ts_pki_ca();
    sign_leaf(name, "127.0.0.1",
              "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
              "basicConstraints=CA:FALSE\n"
              "keyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=serverAuth\n",
              g_ca_crt, g_ca_key, crt, key);
}

void ts_pki_make_untrusted_server(const char *name, const char **crt, const char **key)
{
    const char *ossl = find_prog("openssl", true);
    *crt = ts_str("%s/%s.crt", ts_tmp(), name);
    *key = ts_str("%s/%s.key", ts_tmp(), name);
    char *argv[] = { (char *)ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", (char *)*key,
                     "-out", (char *)*crt, "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                     "subjectAltName=IP:127.0.0.1", NULL };
    ts_openssl(name, argv);
}

void ts_pki_server(const char **crt, const char **key)
{
    ts_pki_ca();
    *crt = g_srv_crt;
    *key = g_srv_key;
}

/* ------------------------------------------------------------------ */
/* keys and tokens                                                    */
/* ------------------------------------------------------------------ */

const char *ts_random_key(int n)
{
    unsigned char buf[128];
    char out[200];
    int fd = open("/dev/urandom", O_RDONLY);
    if (n > (int)sizeof buf || fd < 0 || read(fd, buf, (size_t)n) != n)
        ts_fail("cannot read /dev/urandom");
    close(fd);
    sas_b64_encode(buf, (size_t)n, out, sizeof out);
    return ts_str("%s", out);
}

const char *ts_derive_key(const char *group_key_b64, const char *regid)
{
    unsigned char gk[128], dk[SAS_KEY_LEN];
    char out[64];
    int n = sas_b64_decode(group_key_b64, gk, sizeof gk);
    if (n <= 0)
        ts_fail("group key is not base64: %s", group_key_b64);
    sas_derive_key(gk, (size_t)n, regid, dk);
    sas_b64_encode(dk, sizeof dk, out, sizeof out);
    return ts_str("%s", out);
}

static const char *sas_with(const char *sr, const char *key_b64, long long expiry, const char *skn)
{
    unsigned char k[128];
    char out[800];
    struct timeval tv;
    int n = sas_b64_decode(key_b64, k, sizeof k);
    if (n <= 0)
        ts_fail("key is not base64: %s", key_b64);
    gettimeofday(&tv, NULL);
    sas_build(sr, k, (size_t)n, expiry ? (int64_t)expiry : (int64_t)tv.tv_sec + 3600, skn, out, sizeof out);
    return ts_str("%s", out);
}

const char *ts_device_sas(const char *scope, const char *regid, const char *key_b64, long long expiry)
{
    return sas_with(ts_str("%s/registrations/%s", scope, regid), key_b64, expiry, "registration");
}

const char *ts_stamp_service_sas(const struct ts_stamp *s, const char *key)
{
    return sas_with(s->hostport, key ? key : s->policy_key, 0, s->policy);
}

const char *ts_stamp_connstr(const struct ts_stamp *s, const char *key)
{
    return ts_str("HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s", s->hostport, s->policy,
                  key ? key : s->policy_key);
}

/* ------------------------------------------------------------------ */
/* running programs with stdout and stderr apart                      */
/* ------------------------------------------------------------------ */

/* fork/exec argv with stdout to out_path, stderr to err_path, extra env
 * (NULL-terminated "K=V"); wait up to timeout_ms. Exit code, -1 on timeout/signal. */
static int run_split(char *const argv[], const char *const *env, const char *out_path, const char *err_path,
                     int timeout_ms)
{
    int64_t deadline = ts_now_ms() + timeout_ms;
    int st = 0;
    pid_t pid, r;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0)
        ts_fail("fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setpgid(0, 0);
        signal(SIGPIPE, SIG_DFL);
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        int efd = open(err_path, O_WRONLY | O_CREAT | O_APPEND, 0666);
        int devnull = open("/dev/null", O_RDONLY);
        if (fd < 0 || efd < 0)
            _exit(126);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(fd, 1);
        dup2(efd, 2);
        for (const char *const *e = env; e && *e; e++)
            putenv((char *)*e);
        execv(argv[0], argv);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    for (;;) {
        r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (ts_now_ms() >= deadline) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            (void)waitpid(pid, &st, 0);
            return -1;
        }
        ts_sleep_ms(10);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------------ */
/* HTTPS with curl                                                    */
/* ------------------------------------------------------------------ */

static struct ts_resp **g_https;
static size_t g_nhttps, g_caphttps;

static void https_free_all(void *arg)
{
    (void)arg;
    for (size_t i = 0; i < g_nhttps; i++)
        ts_resp_free(g_https[i]);
    free(g_https);
    g_https = NULL;
    g_nhttps = g_caphttps = 0;
}

static void https_track(struct ts_resp *r)
{
    if (!g_https)
        ts_on_cleanup(https_free_all, NULL);
    if (g_nhttps == g_caphttps) {
        size_t cap = g_caphttps ? g_caphttps * 2 : 64;
        struct ts_resp **n = realloc(g_https, cap * sizeof *n);
        if (!n)
            abort();
        g_https = n;
        g_caphttps = cap;
    }
    g_https[g_nhttps++] = r;
}

static void https_free(struct ts_resp *r)
{
    for (size_t i = 0; i < g_nhttps; i++)
        if (g_https[i] == r) {
            g_https[i] = g_https[--g_nhttps];
            ts_resp_free(r);
            return;
        }
}

struct ts_resp *ts_https(int port, const char *method, const char *path, const char *const *headers,
                         const void *body, size_t body_len, const char *cert, const char *key)
{
    static int seq;
    const char *curl = find_prog("curl", true);
    const char *ca = ts_pki_ca();
    int n = seq++;
    const char *bfile = ts_str("%s/https-%d.req", ts_tmp(), n);
    const char *ofile = ts_str("%s/https-%d.body", ts_tmp(), n);
    const char *hfile = ts_str("%s/https-%d.hdr", ts_tmp(), n);
    const char *wfile = ts_str("%s/https-%d.out", ts_tmp(), n);
    const char *efile = ts_str("%s/https-%d.err", ts_tmp(), n);
    char *argv[64];
    int a = 0;
    struct ts_resp *r = calloc(1, sizeof *r);
    int64_t t0 = ts_now_ms();
    size_t len;
    char *txt;

    if (!r)
        abort();
    https_track(r);
    argv[a++] = (char *)curl;
    argv[a++] = "-sS";
    argv[a++] = "--max-time";
    argv[a++] = "20";
    argv[a++] = "--cacert";
    argv[a++] = (char *)ca;
    argv[a++] = "-X";
    argv[a++] = (char *)method;
    argv[a++] = "-o";
    argv[a++] = (char *)ofile;
    argv[a++] = "-D";
    argv[a++] = (char *)hfile;
    argv[a++] = "-w";
    argv[a++] = "%{http_code}";
    argv[a++] = "-H";
    argv[a++] = "Expect:";
    if (cert) {
        argv[a++] = "--cert";
        argv[a++] = (char *)cert;
        argv[a++] = "--key";
        argv[a++] = (char *)key;
    }
    for (int i = 0; headers && headers[i] && a < 56; i++) {
        argv[a++] = "-H";
        argv[a++] = (char *)headers[i];
    }
    if (body) {
        FILE *f = fopen(bfile, "wb");
        if (!f || fwrite(body, 1, body_len, f) != body_len || fclose(f) != 0)
            ts_fail("cannot write %s", bfile);
        argv[a++] = "--data-binary";
        argv[a++] = (char *)ts_str("@%s", bfile);
    }
    argv[a++] = (char *)ts_str("https://127.0.0.1:%d%s", port, path);
    argv[a] = NULL;
    int rc = run_split(argv, NULL, wfile, efile, 25000);
    r->elapsed_ms = ts_now_ms() - t0;
    txt = ts_read_file(wfile, &len);
    r->status = txt ? atoi(txt) : 0;
    if (rc != 0 || r->status == 0) {
        const char *e = ts_read_file(efile, &len);
        snprintf(r->err, sizeof r->err, "curl exit %d: %s", rc, e ? e : "");
        r->status = 0;
    }
    txt = ts_read_file(ofile, &len);
    r->body = malloc((txt ? len : 0) + 1);
    if (!r->body)
        abort();
    if (txt)
        memcpy(r->body, txt, len);
    r->body_len = txt ? len : 0;
    r->body[r->body_len] = '\0';
    if (r->body_len)
        r->json = json_loadb(r->body, r->body_len, 0, NULL);
    /* headers of the last response block */
    txt = ts_read_file(hfile, &len);
    if (txt) {
        char *copy = ts_str("%s", txt);
        r->hname = calloc(64, sizeof(char *));
        r->hvalue = calloc(64, sizeof(char *));
        if (!r->hname || !r->hvalue)
            abort();
        for (char *save = NULL, *l = strtok_r(copy, "\r\n", &save); l; l = strtok_r(NULL, "\r\n", &save)) {
            char *c = strchr(l, ':');
            if (strncmp(l, "HTTP/", 5) == 0) {
                for (size_t i = 0; i < r->nheaders; i++) {
                    free(r->hname[i]);
                    free(r->hvalue[i]);
                }
                r->nheaders = 0;
                continue;
            }
            if (!c || r->nheaders >= 64)
                continue;
            *c++ = '\0';
            while (*c == ' ')
                c++;
            r->hname[r->nheaders] = strdup(l);
            r->hvalue[r->nheaders] = strdup(c);
            r->nheaders++;
        }
    }
    return r;
}

/* ------------------------------------------------------------------ */
/* the Node SDK                                                       */
/* ------------------------------------------------------------------ */

const char *ts_sdk_modules(void)
{
    static const char *modules;
    const char *bin = ts_env("STAMPCP_BIN_DIR");
    const char *src = ts_env("STAMPCP_SOURCE_DIR");
    const char *dir, *lock, *stamp_file, *pkg, *want, *have, *npm;
    size_t len;
    int fd;

    if (modules)
        return modules;
    find_prog("node", true);
    npm = find_prog("npm", true);
    dir = ts_str("%s/../sdk-node", bin);
    lock = ts_str("%s/../sdk-node.lock", bin);
    stamp_file = ts_str("%s/.installed-package.json", dir);
    pkg = ts_str("%s/tests/sdk/package.json", src);
    want = ts_read_file(pkg, &len);
    if (!want)
        ts_fail("cannot read %s", pkg);
    mkdir(dir, 0755);
    fd = open(lock, O_RDWR | O_CREAT, 0666);
    if (fd < 0)
        ts_fail("cannot open %s: %s", lock, strerror(errno));
    ts_log("waiting for the SDK install lock %s", lock);
    if (flock(fd, LOCK_EX) != 0)
        ts_fail("flock %s: %s", lock, strerror(errno));
    have = ts_read_file(stamp_file, &len);
    if (!have || strcmp(have, want) != 0 || access(ts_str("%s/node_modules/azure-iot-provisioning-service", dir), F_OK) != 0) {
        const char *log = ts_str("%s/npm-install.log", dir);
        ts_write_file(ts_str("%s/package.json", dir), want);
        unlink(stamp_file);
        ts_log("npm install of tests/sdk into %s (log %s)", dir, log);
        char *argv[] = { (char *)npm, "install", "--no-audit", "--no-fund", "--no-package-lock",
                         "--prefix", (char *)dir, NULL };
        int rc = run_split(argv, NULL, log, log, 300000);
        if (rc != 0) {
            const char *t = ts_read_file(log, &len);
            flock(fd, LOCK_UN);
            close(fd);
            ts_fail("npm install for tests/sdk failed (exit %d, -1 = timeout after 300 s); "
                    "the stamp SDK tests need node + npm and the npm registry. Log %s:\n%s",
                    rc, log, t ? t : "");
        }
        ts_write_file(stamp_file, want);
    }
    flock(fd, LOCK_UN);
    close(fd);
    modules = ts_str("%s/node_modules", dir);
    return modules;
}

static char **node_argv(const char *script, const char *const *args)
{
    int n = 0;
    while (args && args[n])
        n++;
    char **argv = ts_keep(calloc((size_t)n + 3, sizeof(char *)));
    argv[0] = (char *)find_prog("node", true);
    argv[1] = (char *)ts_str("%s/tests/sdk/%s", ts_env("STAMPCP_SOURCE_DIR"), script);
    for (int i = 0; i < n; i++)
        argv[i + 2] = (char *)args[i];
    return argv;
}

json_t *ts_node(const char *script, const char *const *args, int timeout_ms, int *exit_code)
{
    static int seq;
    const char *mods = ts_sdk_modules();
    const char *ca = ts_pki_ca();
    int n = seq++;
    const char *out = ts_str("%s/node-%d-%s.out", ts_tmp(), n, script);
    const char *err = ts_str("%s/node-%d-%s.err", ts_tmp(), n, script);
    const char *env[] = { ts_str("NODE_PATH=%s", mods), ts_str("NODE_EXTRA_CA_CERTS=%s", ca), NULL };
    size_t len;
    int rc = run_split(node_argv(script, args), env, out, err, timeout_ms);
    const char *txt = ts_read_file(out, &len);
    json_t *j = txt ? json_loads(txt, JSON_DECODE_ANY, NULL) : NULL;
    if (exit_code)
        *exit_code = rc;
    if (!j) {
        const char *e = ts_read_file(err, &len);
        ts_log("node %s exited %d with no JSON on stdout: %s | stderr: %s", script, rc, txt ? txt : "",
               e ? e : "");
    }
    return ts_jkeep(j);
}

json_t *ts_sdk_service(const struct ts_stamp *s, const char *command, const char *json_args, int *exit_code)
{
    const char *args[] = { ts_stamp_connstr(s, NULL), command, json_args, NULL };
    return ts_node("service.js", args, 40000, exit_code);
}

json_t *ts_sdk_symkey(const struct ts_stamp *s, const char *scope, const char *regid, const char *key,
                      bool group, const char *payload, int *exit_code)
{
    const char *args[] = { s->hostport, scope, regid, key, group ? "group" : "individual", payload, NULL };
    return ts_node("provision-symkey.js", args, 45000, exit_code);
}

json_t *ts_sdk_x509(const struct ts_stamp *s, const char *scope, const char *regid, const char *cert,
                    const char *key, const char *payload, int *exit_code)
{
    const char *args[] = { s->hostport, scope, regid, cert, key, payload, NULL };
    return ts_node("provision-x509.js", args, 45000, exit_code);
}

struct ts_proc *ts_node_spawn(const char *name, const char *script, const char *const *args)
{
    const char *mods = ts_sdk_modules();
    setenv("NODE_PATH", mods, 1);
    ts_pki_ca();
    return ts_proc_spawn(name, node_argv(script, args), NULL, NULL);
}

/* ------------------------------------------------------------------ */
/* the stamp agent                                                    */
/* ------------------------------------------------------------------ */

bool ts_stamp_healthy(struct ts_stamp *s)
{
    struct ts_resp *r = ts_https(s->port, "GET", "/healthz", NULL, NULL, 0, NULL, NULL);
    bool ok = r->status == 200;
    https_free(r);
    return ok;
}

char **ts_stamp_argv(const struct ts_stamp *s)
{
    char **argv = ts_keep(calloc(4, sizeof(char *)));
    argv[0] = (char *)ts_bin("stamp-agent");
    argv[1] = "--config";
    argv[2] = (char *)s->config_path;
    return argv;
}

static void stamp_spawn(struct ts_stamp *s)
{
    static int seq;
    s->proc = ts_proc_spawn(ts_str("stamp-agent-%d", seq++), ts_stamp_argv(s), NULL, NULL);
    for (int64_t deadline = ts_now_ms() + 20000;;) {
        if (!ts_proc_alive(s->proc)) {
            ts_proc_dump_log(s->proc, 4000);
            ts_fail("stamp-agent exited at startup (exit %d)", ts_proc_exit_code(s->proc));
        }
        if (ts_stamp_healthy(s))
            return;
        if (ts_now_ms() > deadline) {
            ts_proc_dump_log(s->proc, 4000);
            ts_fail("stamp-agent: no GET /healthz 200 on %s within 20 s", s->hostport);
        }
        ts_sleep_ms(100);
    }
}

/* A geo_identity table (schema/geo/001_identity.sql) naming geography. */
static void stamp_geo_identity(const char *db, const char *geography)
{
    size_t len;
    const char *ddl = ts_read_file(ts_str("%s/schema/geo/001_identity.sql", ts_env("STAMPCP_SOURCE_DIR")), &len);
    PGconn *c;
    PGresult *r;
    const char *v[1] = { geography };
    if (!ddl)
        ts_fail("cannot read schema/geo/001_identity.sql");
    PQclear(ts_pg_query(db, ddl));
    c = ts_pg_connect(db);
    r = PQexecParams(c, "INSERT INTO geo_identity (geography) VALUES ($1)", 1, NULL, v, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        ts_fail("geo_identity: %s", PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
}

/*
 * The setup step of docs/security.md "Database roles", as infra/stack does it:
 * the owner (here the test superuser) applies the stamp migrations with
 * `stamp-agent --migrate`, then creates the agent's role and grants it its
 * instances with stamp_agent_grant().
 */
static void stamp_own_role(struct ts_stamp *s, const struct ts_stamp_opts *o, const char *name)
{
    char *argv[] = { (char *)ts_bin("stamp-agent"), "--config", (char *)s->config_path, "--migrate", NULL };
    char *out = NULL;
    const char *password = ts_random_key(24), *ids = "{";
    int rc = ts_run(argv, 40000, &out);
    PGconn *c;
    PGresult *r;
    const char *v[2];

    if (rc != 0)
        ts_fail("stamp-agent --migrate exited %d: %s", rc, out ? out : "");
    s->role = ts_str("stampcp_agent_%ld_%s", (long)getpid(), name);
    for (char *p = (char *)s->role; *p; p++)
        if (*p == '-')
            *p = '_';
    ts_pg_create_role(ts_env("STAMPCP_TEST_PG"), s->role, password, s->db);
    for (int i = 0; i < TS_STAMP_MAX && o->inst[i].id; i++)
        ids = ts_str("%s%s\"%s\"", ids, i ? "," : "", o->inst[i].id);
    ids = ts_str("%s}", ids);
    v[0] = s->role;
    v[1] = ids;
    c = ts_pg_connect(s->db);
    r = PQexecParams(c, "SELECT stamp_agent_grant($1, $2::text[])", 2, NULL, v, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        ts_fail("stamp_agent_grant(%s): %s", s->role, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
    s->role_db = ts_pg_conninfo_user(s->db, s->role, password);
    ts_log("stamp %s runs as role %s (instances %s)", name, s->role, ids);
}

struct ts_stamp *ts_stamp_start(const struct ts_stamp_opts *o)
{
    struct ts_stamp *s = ts_keep(calloc(1, sizeof *s));
    const char *name = o->name ? o->name : "stamp";
    json_t *cfg = json_object(), *prov = json_object(), *insts = json_array(), *hubs = json_array();
    char *txt;

    ts_pki_ca();
    s->redis = ts_redis_start(ts_str("%s-redis", name));
    if (o->db) {
        s->db = o->db;
    } else {
        s->db = ts_pg_create_db(ts_env("STAMPCP_TEST_PG"), ts_unique(name));
        if (o->geography)
            stamp_geo_identity(s->db, o->geography);
    }
    s->port = ts_free_port();
    s->hostport = ts_str("127.0.0.1:%d", s->port);
    s->policy = "provisioningserviceowner";
    s->policy_key = ts_random_key(32);
    s->config_path = ts_str("%s/%s-agent.json", ts_tmp(), name);

    json_object_set_new(cfg, "stampId", json_string(ts_str("%s-%ld", name, (long)getpid())));
    json_object_set_new(cfg, "region", json_string("test-region"));
    json_object_set_new(cfg, "redis", json_string(s->redis->addr));
    json_object_set_new(cfg, "reportIntervalMs", json_integer(200));
    json_object_set_new(cfg, "kekFile", json_string(ts_kek_file()));
    json_object_set_new(prov, "listen", json_string(s->hostport));
    json_object_set_new(prov, "database", json_string(s->db));
    if (o->geography)
        json_object_set_new(prov, "geography", json_string(o->geography));
    /* the tests' custom allocation webhooks run on loopback (docs/stamp-dps.md) */
    if (!o->webhook_strict)
        json_object_set_new(prov, "webhookAllowPrivate", json_true());
    if (o->prov_extra_json) {
        json_t *x = json_loads(ts_str("{%s}", o->prov_extra_json), 0, NULL);
        if (!x)
            ts_fail("ts_stamp: prov_extra_json is not JSON members: %s", o->prov_extra_json);
        json_object_update(prov, x);
        json_decref(x);
    }
    json_object_set_new(prov, "tls", json_pack("{s:s, s:s}", "cert", g_srv_crt, "key", g_srv_key));
    json_object_set_new(prov, "servicePolicies",
                        json_pack("[{s:s, s:s}]", "name", s->policy, "key", s->policy_key));
    for (int i = 0; i < TS_STAMP_MAX && o->inst[i].id; i++) {
        const struct ts_stamp_inst *in = &o->inst[i];
        json_t *j = json_pack("{s:s, s:s}", "id", in->id, "idScope", in->scope);
        if (in->per_minute)
            json_object_set_new(j, "registrationsPerMinute", json_integer(in->per_minute));
        if (in->throttle)
            json_object_set_new(j, "throttle", json_string(in->throttle));
        if (in->max_registrations)
            json_object_set_new(j, "maxRegistrations", json_integer(in->max_registrations));
        if (in->polls_per_10s)
            json_object_set_new(j, "pollsPer10s", json_integer(in->polls_per_10s));
        json_array_append_new(insts, j);
    }
    for (int i = 0; i < TS_STAMP_MAX && o->hubs[i].id; i++) {
        const struct ts_stamp_hub *h = &o->hubs[i];
        json_t *j = json_pack("{s:s, s:s}", "id", h->id, "hostName", h->host);
        if (h->weight)
            json_object_set_new(j, "allocationWeight", json_integer(h->weight));
        json_array_append_new(hubs, j);
    }
    json_object_set_new(prov, "instances", insts);
    json_object_set_new(prov, "hubs", hubs);
    if (o->webhook_timeout_ms)
        json_object_set_new(prov, "webhookTimeoutMs", json_integer(o->webhook_timeout_ms));
    if (o->auth_failures_per_10s)
        json_object_set_new(prov, "authFailuresPer10s", json_integer(o->auth_failures_per_10s));
    json_object_set_new(cfg, "provisioning", prov);
    txt = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    ts_write_file(s->config_path, txt);
    free(txt);
    /* STAMPCP_TEST_STAMP_OWN_ROLE=1 runs every stamp test's agent under its own role */
    if (o->own_role || (getenv("STAMPCP_TEST_STAMP_OWN_ROLE") && strcmp(getenv("STAMPCP_TEST_STAMP_OWN_ROLE"), "1") == 0)) {
        stamp_own_role(s, o, name);
        json_object_set_new(prov, "database", json_string(s->role_db));
        txt = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        ts_write_file(s->config_path, txt);
        free(txt);
    }
    json_decref(cfg);
    if (o->no_start)
        return s;
    stamp_spawn(s);
    ts_log("stamp-agent %s serving DPS on https://%s", name, s->hostport);
    return s;
}

void ts_stamp_restart(struct ts_stamp *s)
{
    stamp_spawn(s);
}

void ts_stamp_kill(struct ts_stamp *s, int sig)
{
    if (!s->proc)
        return;
    ts_proc_kill(s->proc, sig);
    if (!ts_proc_wait(s->proc, 5000)) {
        ts_proc_kill(s->proc, SIGKILL);
        if (!ts_proc_wait(s->proc, 5000))
            ts_fail("stamp-agent did not exit after signal %d", sig);
    }
}

/* ------------------------------------------------------------------ */
/* raw service and device API calls                                   */
/* ------------------------------------------------------------------ */

struct ts_resp *ts_stamp_service(const struct ts_stamp *s, const char *key, const char *method, const char *path,
                                 const char *json_body)
{
    const char *h[] = { ts_str("Authorization: %s", ts_stamp_service_sas(s, key)), "Accept: application/json",
                        "Content-Type: application/json; charset=utf-8", NULL };
    return ts_https(s->port, method, path, h, json_body, json_body ? strlen(json_body) : 0, NULL, NULL);
}

struct ts_resp *ts_stamp_hub(const struct ts_stamp *s, const char *hub_host, const char *method, const char *path,
                             const char *if_match, const char *json_body)
{
    const char *h[] = { ts_str("Host: %s", hub_host),
                        ts_str("Authorization: %s", sas_with(hub_host, s->policy_key, 0, s->policy)),
                        "Accept: application/json", "Content-Type: application/json; charset=utf-8",
                        if_match ? ts_str("If-Match: %s", if_match) : NULL, NULL };
    return ts_https(s->port, method, path, h, json_body, json_body ? strlen(json_body) : 0, NULL, NULL);
}

void ts_stamp_put_symkey_group(const struct ts_stamp *s, const char *group_id, const char *primary_key,
                               const char *secondary_key)
{
    TS_EXPECT_STATUS(ts_stamp_service(s, NULL, "PUT", ts_str("/enrollmentGroups/%s?api-version=2021-10-01", group_id),
                                      ts_json("{'enrollmentGroupId':'%s','attestation':{'type':'symmetricKey',"
                                              "'symmetricKey':{'primaryKey':'%s','secondaryKey':'%s'}}}",
                                              group_id, primary_key, secondary_key)),
                     200);
}

struct ts_resp *ts_stamp_register(const struct ts_stamp *s, const char *scope, const char *regid, const char *authz,
                                  const char *body)
{
    const char *b = body ? body : ts_str("{\"registrationId\":\"%s\"}", regid);
    const char *h[] = { "Accept: application/json", "Content-Type: application/json; charset=utf-8",
                        authz ? ts_str("Authorization: %s", authz) : NULL, NULL };
    return ts_https(s->port, "PUT", ts_str("/%s/registrations/%s/register?api-version=2019-03-31", scope, regid), h,
                    b, strlen(b), NULL, NULL);
}

struct ts_resp *ts_stamp_operation(const struct ts_stamp *s, const char *scope, const char *regid, const char *op,
                                   const char *authz)
{
    const char *h[] = { "Accept: application/json", "Content-Type: application/json; charset=utf-8",
                        authz ? ts_str("Authorization: %s", authz) : NULL, NULL };
    return ts_https(s->port, "GET",
                    ts_str("/%s/registrations/%s/operations/%s?api-version=2019-03-31", scope, regid, op), h, "{}", 2,
                    NULL, NULL);
}

static int retry_after_ms(const struct ts_resp *r)
{
    const char *ra = ts_header(r, "Retry-After");
    int ms = ra ? (int)(atof(ra) * 1000) : 1000;
    return ms < 0 ? 0 : ms > 10000 ? 10000 : ms;
}

struct ts_resp *ts_stamp_provision(const struct ts_stamp *s, const char *scope, const char *regid, const char *authz,
                                   int timeout_ms)
{
    int64_t deadline = ts_now_ms() + timeout_ms;
    struct ts_resp *r = ts_stamp_register(s, scope, regid, authz, NULL);
    const char *op;
    while (r->status >= 200 && r->status < 300 && r->json && (op = ts_jstr(r->json, "operationId")) &&
           ts_jstr(r->json, "status") && strcmp(ts_jstr(r->json, "status"), "assigning") == 0 &&
           ts_now_ms() < deadline) {
        ts_sleep_ms(retry_after_ms(r));
        r = ts_stamp_operation(s, scope, regid, op, authz);
    }
    return r;
}

bool ts_is_dps_error(const struct ts_resp *r, int status)
{
    json_t *c = r->json ? json_object_get(r->json, "errorCode") : NULL;
    return r->status == status && json_is_integer(c) && json_integer_value(c) / 1000 == status &&
           ts_jstr(r->json, "trackingId") && ts_jstr(r->json, "message") && ts_jstr(r->json, "timestampUtc");
}
