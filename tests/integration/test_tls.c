/*
 * test_tls - transport security of both daemons' listeners (docs/security.md
 * "Transport security"), over real sockets:
 *
 *   - the control plane serves HTTPS by default: a client trusting its CA
 *     gets answers; a client with another CA is refused in the handshake; a
 *     plain HTTP request to the TLS port gets no HTTP answer;
 *   - "plainHttp": true serves plain HTTP (and then TLS clients fail);
 *   - tls.clientCa (mTLS): no client certificate, or one from another CA, is
 *     refused; a certificate from the configured CA is accepted;
 *   - SIGHUP swaps the certificate of the control plane and of a stamp
 *     agent's DPS listener while a keep-alive connection stays up: new
 *     connections see the new certificate, the old connection still answers
 *     with the old one; a certificate that does not load keeps the previous
 *     one in use (and the daemon running).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"
#include "ts_stamp.h"

static const char *const k_geos_eu[] = { "eu", NULL };

static struct ts_cp_opts cp_opts(const char *name)
{
    struct ts_cp_opts o;
    memset(&o, 0, sizeof o);
    o.name = name;
    for (int i = 0; k_geos_eu[i]; i++)
        o.geo_ids[i] = k_geos_eu[i];
    return o;
}

/* Copy a file's bytes to dst (overwriting it). */
static void copy_file(const char *src, const char *dst)
{
    size_t len;
    char *txt = ts_read_file(src, &len);
    if (!txt)
        ts_fail("cannot read %s", src);
    ts_write_file(dst, txt);
}

static void expect_refused(const struct ts_resp *r, const char *what, const char *err_part)
{
    if (r->status != 0)
        ts_fail("%s: expected no HTTP answer (refused), got %s", what, ts_resp_str(r));
    if (err_part && !strstr(r->err, err_part))
        ts_fail("%s: refused, but not for the expected reason (want \"%s\"): %s", what, err_part, r->err);
    ts_log("%s: refused (%s)", what, r->err);
}

/* HTTPS by default; the wrong CA and plain HTTP are refused, the daemon keeps serving. */
static void test_https_default(void **state)
{
    struct ts_cp_opts o = cp_opts("cp-https");
    struct ts_cp *cp = ts_controlplane_start(&o);
    const char *other_ca, *other_key;
    struct ts_http_opts wrong = { .tls = TS_HTTP_TLS };
    struct ts_http_opts plain = { .tls = TS_HTTP_PLAIN };
    struct ts_resp *r;
    (void)state;

    assert_true(cp->tls);
    /* the verified HTTPS path (ts_http trusts ts_pki_ca() for this port) */
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
    TS_EXPECT_STATUS(ts_admin(cp, "POST", "/v1/geographies", "{\"id\":\"eu\"}"), 201);
    TS_EXPECT_STATUS(ts_admin(cp, "GET", "/v1/geographies/eu", NULL), 200);
    assert_true(ts_proc_log_contains(cp->proc, "scheme=https"));

    /* a client trusting another CA: the handshake fails on its side */
    ts_pki_make_ca("other-ca", "some other CA", &other_ca, &other_key);
    wrong.ca = other_ca;
    expect_refused(ts_http_ex(cp->port, &wrong, "GET", "/healthz", NULL, NULL, 0), "wrong CA",
                   "certificate verify failed");
    /* the system store does not know the test CA either */
    wrong.ca = NULL;
    expect_refused(ts_http_ex(cp->port, &wrong, "GET", "/healthz", NULL, NULL, 0), "system trust store",
                   "certificate verify failed");
    /* plain HTTP to the TLS port: no HTTP answer, the token never gets a reply in clear */
    r = ts_http_ex(cp->port, &plain, "GET", "/v1/geographies",
                   (const char *const[]){ ts_str("Authorization: Bearer %s", cp->token), NULL }, NULL, 0);
    expect_refused(r, "plain HTTP to the HTTPS port", NULL);
    assert_null(strstr(r->body, "eu"));

    /* still serving, over TLS */
    assert_true(ts_proc_alive(cp->proc));
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
}

/* "plainHttp": true is plain HTTP, and only that. */
static void test_plain_when_configured(void **state)
{
    struct ts_cp_opts o = cp_opts("cp-plain");
    struct ts_cp *cp;
    struct ts_http_opts tls = { .tls = TS_HTTP_TLS, .ca = ts_pki_ca() };
    (void)state;

    o.plain_http = true;
    cp = ts_controlplane_start(&o);
    assert_false(cp->tls);
    TS_EXPECT_STATUS(ts_get(cp, "/healthz"), 200);
    assert_true(ts_proc_log_contains(cp->proc, "event=plain_http"));
    assert_true(ts_proc_log_contains(cp->proc, "scheme=http"));
    assert_false(ts_proc_log_contains(cp->proc, "scheme=https"));
    expect_refused(ts_http_ex(cp->port, &tls, "GET", "/healthz", NULL, NULL, 0), "TLS to a plain listener", "tls:");
}

static bool healthz_with_cert(void *arg)
{
    const struct ts_http_opts *o = ((const void *const *)arg)[0];
    const struct ts_cp *cp = ((const void *const *)arg)[1];
    struct ts_resp *r = ts_http_ex(cp->port, o, "GET", "/healthz", NULL, NULL, 0);
    bool ok = r->status == 200;
    ts_resp_free(r);
    return ok;
}

/* tls.clientCa: a client certificate from that CA is required. */
static void test_mtls(void **state)
{
    struct ts_cp_opts o = cp_opts("cp-mtls");
    const char *dev_ca, *dev_ca_key, *rogue_ca, *rogue_ca_key, *good_crt, *good_key, *rogue_crt, *rogue_key;
    struct ts_cp *cp;
    struct ts_http_opts none = { .tls = TS_HTTP_TLS, .ca = ts_pki_ca() };
    struct ts_http_opts good, rogue;
    const void *args[2];
    const char *auth;
    (void)state;

    ts_pki_make_ca("mtls-ca", "stampcp client CA", &dev_ca, &dev_ca_key);
    ts_pki_make_ca("rogue-ca", "stampcp client CA", &rogue_ca, &rogue_ca_key);   /* same name, other key */
    ts_pki_make_leaf("mtls-good", "installer-1", dev_ca, dev_ca_key, &good_crt, &good_key);
    ts_pki_make_leaf("mtls-rogue", "installer-1", rogue_ca, rogue_ca_key, &rogue_crt, &rogue_key);
    good = (struct ts_http_opts){ .tls = TS_HTTP_TLS, .ca = ts_pki_ca(), .cert = good_crt, .key = good_key };
    rogue = (struct ts_http_opts){ .tls = TS_HTTP_TLS, .ca = ts_pki_ca(), .cert = rogue_crt, .key = rogue_key };

    o.client_ca = dev_ca;
    o.no_wait = true;
    cp = ts_controlplane_start(&o);
    args[0] = &good;
    args[1] = cp;
    if (!ts_wait_until(healthz_with_cert, args, 20000)) {
        ts_proc_dump_log(cp->proc, 4000);
        ts_fail("controlplane with tls.clientCa: no /healthz 200 with a good client certificate within 20 s");
    }
    assert_true(ts_proc_log_contains(cp->proc, "client_certificates=required"));

    /* accepted: probes and the admin API with its token */
    auth = ts_str("Authorization: Bearer %s", cp->token);
    TS_EXPECT_STATUS(ts_http_ex(cp->port, &good, "GET", "/healthz", NULL, NULL, 0), 200);
    TS_EXPECT_STATUS(ts_http_ex(cp->port, &good, "POST", "/v1/geographies",
                                (const char *const[]){ auth, "Content-Type: application/json", NULL },
                                "{\"id\":\"eu\"}", 11), 201);
    /* the certificate does not replace the token */
    TS_EXPECT_ERROR(ts_http_ex(cp->port, &good, "GET", "/v1/geographies", NULL, NULL, 0), 401, "unauthorized");

    /* refused in the handshake: no certificate, and one from another CA with the same name */
    expect_refused(ts_http_ex(cp->port, &none, "GET", "/healthz", NULL, NULL, 0), "no client certificate", NULL);
    expect_refused(ts_http_ex(cp->port, &rogue, "GET", "/healthz", NULL, NULL, 0), "client certificate of another CA",
                   NULL);
    expect_refused(ts_http_ex(cp->port, &none, "GET", "/v1/geographies",
                              (const char *const[]){ auth, NULL }, NULL, 0), "admin call without a certificate", NULL);
    assert_true(ts_proc_alive(cp->proc));
    TS_EXPECT_STATUS(ts_http_ex(cp->port, &good, "GET", "/v1/geographies/eu",
                                (const char *const[]){ auth, NULL }, NULL, 0), 200);
}

static const char *g_log_needle;
static struct ts_proc *g_log_proc;
static bool log_has(void *arg)
{
    (void)arg;
    return ts_proc_log_contains(g_log_proc, g_log_needle);
}

static void wait_log(struct ts_proc *p, const char *needle)
{
    g_log_proc = p;
    g_log_needle = needle;
    if (!ts_wait_until(log_has, NULL, 10000)) {
        ts_proc_dump_log(p, 3000);
        ts_fail("%s never logged %s", p->name, needle);
    }
}

/*
 * The SIGHUP check shared by both daemons: the listener on port serves
 * crt_path/key_path (now holding the first certificate, fp_old), trusted via
 * ca. keep: a keep-alive connection opened before. Swap in a new certificate,
 * SIGHUP, check new and old connections; then a broken file and SIGHUP.
 */
static void sighup_swap(struct ts_proc *proc, int port, const char *crt_path, const char *key_path,
                        const char *path, const char *reloaded_needle)
{
    struct ts_http_opts tls = { .tls = TS_HTTP_TLS, .ca = ts_pki_ca() };
    const char *fp_old = ts_cert_fingerprint(crt_path), *fp_new, *new_crt, *new_key;
    struct ts_conn *keep = ts_conn_open(port, &tls), *fresh, *after_bad;
    struct ts_resp *r;

    r = ts_conn_request(keep, "GET", path, NULL, NULL, 0);
    TS_EXPECT_STATUS(r, 200);
    TS_EXPECT_STREQ(ts_conn_peer_fingerprint(keep), fp_old);

    /* a new certificate in the same files, then SIGHUP */
    ts_pki_make_server(ts_str("%s-next", proc->name), &new_crt, &new_key);
    fp_new = ts_cert_fingerprint(new_crt);
    assert_string_not_equal(fp_new, fp_old);
    copy_file(new_key, key_path);
    copy_file(new_crt, crt_path);
    ts_proc_kill(proc, SIGHUP);
    wait_log(proc, reloaded_needle);
    assert_true(ts_proc_alive(proc));

    /* new connections: the new certificate */
    fresh = ts_conn_open(port, &tls);
    TS_EXPECT_STATUS(ts_conn_request(fresh, "GET", path, NULL, NULL, 0), 200);
    TS_EXPECT_STREQ(ts_conn_peer_fingerprint(fresh), fp_new);
    /* the keep-alive connection from before: still up, still the old certificate */
    for (int i = 0; i < 3; i++) {
        r = ts_conn_request(keep, "GET", path, NULL, NULL, 0);
        TS_EXPECT_STATUS(r, 200);
    }
    TS_EXPECT_STREQ(ts_conn_peer_fingerprint(keep), fp_old);

    /* a certificate file that does not load: logged, the new certificate stays in use */
    ts_write_file(crt_path, "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n");
    ts_proc_kill(proc, SIGHUP);
    wait_log(proc, "event=tls_reload_failed");
    assert_true(ts_proc_alive(proc));
    after_bad = ts_conn_open(port, &tls);
    TS_EXPECT_STATUS(ts_conn_request(after_bad, "GET", path, NULL, NULL, 0), 200);
    TS_EXPECT_STREQ(ts_conn_peer_fingerprint(after_bad), fp_new);
    TS_EXPECT_STATUS(ts_conn_request(keep, "GET", path, NULL, NULL, 0), 200);
    TS_EXPECT_STATUS(ts_conn_request(fresh, "GET", path, NULL, NULL, 0), 200);
    ts_conn_close(after_bad);
    ts_conn_close(fresh);
    ts_conn_close(keep);
}

static void test_sighup_controlplane(void **state)
{
    struct ts_cp_opts o = cp_opts("cp-sighup");
    const char *crt, *key, *my_crt = ts_str("%s/cp-sighup.crt", ts_tmp()), *my_key = ts_str("%s/cp-sighup.key", ts_tmp());
    struct ts_cp *cp;
    (void)state;

    ts_pki_server(&crt, &key);
    copy_file(crt, my_crt);
    copy_file(key, my_key);
    o.tls_cert = my_crt;
    o.tls_key = my_key;
    cp = ts_controlplane_start(&o);
    sighup_swap(cp->proc, cp->port, my_crt, my_key, "/healthz", "event=tls_reloaded generation=1");
    /* SIGHUP is no shutdown: SIGTERM still ends it cleanly */
    assert_int_equal(ts_controlplane_stop(cp, 10000), 0);
}

static void test_sighup_stamp(void **state)
{
    struct ts_stamp_opts o;
    struct ts_stamp *s;
    const char *crt, *key, *keep_crt = ts_str("%s/orig-srv.crt", ts_tmp()), *keep_key = ts_str("%s/orig-srv.key", ts_tmp());
    (void)state;

    memset(&o, 0, sizeof o);
    o.name = "tls-stamp";
    o.inst[0] = (struct ts_stamp_inst){ .id = "tls-stamp-dps", .scope = "0ne00000TLS" };
    o.hubs[0] = (struct ts_stamp_hub){ .id = "tls-stamp-hub", .host = "tls-stamp-hub.example.net" };
    s = ts_stamp_start(&o);
    /* the agent serves ts_pki_server()'s files; this test owns them (no control plane here) */
    ts_pki_server(&crt, &key);
    copy_file(crt, keep_crt);
    copy_file(key, keep_key);
    sighup_swap(s->proc, s->port, crt, key, "/healthz", "event=tls_reloaded generation=1");
    /* put the original back for anything that follows */
    copy_file(keep_key, key);
    copy_file(keep_crt, crt);
    ts_stamp_kill(s, SIGTERM);
    assert_int_equal(ts_proc_exit_code(s->proc), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_https_default),
        cmocka_unit_test(test_plain_when_configured),
        cmocka_unit_test(test_mtls),
        cmocka_unit_test(test_sighup_controlplane),
        cmocka_unit_test(test_sighup_stamp),
    };
    ts_init("test_tls");
    return ts_finish(cmocka_run_group_tests(tests, NULL, NULL));
}
