/*
 * test_sd_machine.c - the libstampdevice state machine driven with a fake
 * clock: every retry rule of sd_machine.h, the boot paths (cold, warm,
 * retired, DPS only), approach 1 and 2, reprovisioning, answer validation,
 * request building and the SAS token against the DPS spec's vectors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "sd_crypto.h"
#include "sd_machine.h"

#define REGID "dev-1"
#define TENANT "acme"
#define T0 1000000 /* the fake monotonic clock starts here */
#define WALL 1700000000

/* ---- the rig: one machine, a fake clock, the last action ---- */

struct rig {
    struct sd_config cfg;
    struct sd_machine m;
    struct sd_action a;
    int64_t now;
    int sends[SD_REQ_KIND_COUNT];
    int persists;
};

static void rig_config(struct rig *r)
{
    memset(r, 0, sizeof *r);
    r->cfg.cp_host = "127.0.0.1:8080";
    r->cfg.tenant_id = TENANT;
    r->cfg.approach = SD_APPROACH_LOCATE;
    r->cfg.auth = SD_AUTH_SYMKEY;
    r->cfg.seed = 42;
    r->now = T0;
}

static void rig_start(struct rig *r, const struct sd_state *st)
{
    static const unsigned char key[SD_KEY_LEN] = {1, 2, 3};
    struct sd_event ev = {.type = SD_EV_BOOT, .now_ms = r->now, .wall_s = WALL, .state = st};
    sd_config_defaults(&r->cfg);
    assert_null(sd_config_check(&r->cfg));
    assert_true(sd_machine_init(&r->m, &r->cfg, REGID, key));
    sd_machine_step(&r->m, &ev, &r->a);
    if (r->a.type == SD_ACT_SEND)
        r->sends[r->a.kind]++;
}

static void rig_event(struct rig *r, struct sd_event ev)
{
    ev.now_ms = r->now;
    ev.wall_s = WALL;
    sd_machine_step(&r->m, &ev, &r->a);
    if (r->a.type == SD_ACT_SEND)
        r->sends[r->a.kind]++;
    if (r->a.type == SD_ACT_PERSIST)
        r->persists++;
}

static void ev_type(struct rig *r, enum sd_event_type t)
{
    rig_event(r, (struct sd_event){.type = t});
}

/* Answer the outstanding request (the last action may be a WAIT for a later event). */
static void respond(struct rig *r, int status, int retry_after, const char *body)
{
    assert_int_equal(sd_machine_phase(&r->m), SD_PH_REQUEST);
    rig_event(r, (struct sd_event){.type = SD_EV_RESPONSE, .status = status, .retry_after_s = retry_after,
                                   .body = body, .body_len = body ? strlen(body) : 0});
}

static void io_error(struct rig *r)
{
    assert_int_equal(sd_machine_phase(&r->m), SD_PH_REQUEST);
    ev_type(r, SD_EV_IO_ERROR);
}

/* Sleep until the deadline and deliver the TIMER. */
static void fire(struct rig *r)
{
    assert_int_equal(r->a.type, SD_ACT_SLEEP);
    if (r->a.until_ms > r->now)
        r->now = r->a.until_ms;
    ev_type(r, SD_EV_TIMER);
}

static void persisted(struct rig *r)
{
    assert_int_equal(r->a.type, SD_ACT_PERSIST);
    rig_event(r, (struct sd_event){.type = SD_EV_PERSISTED, .ok = true});
}

static void expect_send(const struct rig *r, enum sd_req_kind k)
{
    assert_int_equal(r->a.type, SD_ACT_SEND);
    assert_string_equal(sd_req_kind_name(r->a.kind), sd_req_kind_name(k));
}

static void request(const struct rig *r, struct sd_request *rq)
{
    assert_true(sd_machine_request(&r->m, WALL, rq));
}

/* ---- answer bodies ---- */

static char body_buf[4][1024];

static const char *assignment(int slot, const char *stamp, const char *scope, const char *endpoint,
                              const char *extra)
{
    snprintf(body_buf[slot], sizeof body_buf[slot],
             "{\"registrationId\":\"" REGID "\",\"tenantId\":\"" TENANT "\",\"geography\":\"eu\","
             "\"region\":\"eu-west\",\"stamp\":\"%s\",\"idScope\":\"%s\",\"dpsEndpoint\":\"%s\","
             "\"assignedAt\":\"2026-11-27T02:50:37.502Z\",\"etag\":\"1\"%s}",
             stamp, scope, endpoint, extra ? extra : "");
    return body_buf[slot];
}

#define HERE() assignment(0, "eu-west-1", "0ne0000EW10", "127.0.0.1:9443", NULL)
#define THERE() assignment(1, "eu-west-2", "0ne0000EW20", "127.0.0.1:9444", NULL)
#define ASSIGNING "{\"operationId\":\"5.abc.d-e\",\"status\":\"assigning\"}"
#define ASSIGNED(hub)                                                                                 \
    "{\"operationId\":\"5.abc.d-e\",\"status\":\"assigned\",\"registrationState\":{\"registrationId\":\"" REGID \
    "\",\"assignedHub\":\"" hub "\",\"deviceId\":\"" REGID "\",\"status\":\"assigned\","                \
    "\"substatus\":\"initialAssignment\"}}"

/* A state as a previous run persisted it: assigned to eu-west-1 with hub-1. */
static struct sd_state cached_state(void)
{
    struct sd_state s;
    memset(&s, 0, sizeof s);
    s.flags = SD_STATE_ASSIGNED | SD_STATE_HUB;
    snprintf(s.registration_id, sizeof s.registration_id, "%s", REGID);
    snprintf(s.tenant_id, sizeof s.tenant_id, "%s", TENANT);
    snprintf(s.geography, sizeof s.geography, "eu");
    snprintf(s.region, sizeof s.region, "eu-west");
    snprintf(s.stamp, sizeof s.stamp, "eu-west-1");
    snprintf(s.id_scope, sizeof s.id_scope, "0ne0000EW10");
    snprintf(s.dps_endpoint, sizeof s.dps_endpoint, "127.0.0.1:9443");
    snprintf(s.assigned_hub, sizeof s.assigned_hub, "hub-1.example");
    snprintf(s.device_id, sizeof s.device_id, REGID);
    snprintf(s.etag, sizeof s.etag, "1");
    return s;
}

/* Cold boot through approach 1 to READY. */
static void provision_to_ready(struct rig *r)
{
    expect_send(r, SD_REQ_LOCATE);
    respond(r, 200, -1, HERE());
    expect_send(r, SD_REQ_DPS_REGISTER);
    respond(r, 202, 1, ASSIGNING);
    fire(r);
    expect_send(r, SD_REQ_DPS_POLL);
    respond(r, 200, -1, ASSIGNED("hub-1.example"));
    persisted(r);
    assert_int_equal(r->a.type, SD_ACT_READY);
}

/* ---- SAS and crypto ---- */

static void test_sas_known_value(void **unused)
{
    /* dps-wire.md §4.3: group key base64("0123456789abcdef0123456789abcdef"). */
    unsigned char group[64], dk[SD_KEY_LEN];
    char b64[64], sas[512];
    int n = sd_crypto_b64_decode("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", group, sizeof group);
    struct sd_config cfg = {.dps_host_override = "localhost:9443", .id_scope_override = "0ne00000A0A",
                            .auth = SD_AUTH_SYMKEY};
    struct sd_machine m;
    struct sd_action a;
    struct sd_request rq;
    struct sd_event boot = {.type = SD_EV_BOOT, .now_ms = T0};
    (void)unused;
    assert_int_equal(n, 32);
    sd_derive_key(group, (size_t)n, "my-device-01", dk);
    assert_true(sd_crypto_b64_encode(dk, sizeof dk, b64, sizeof b64));
    assert_string_equal(b64, "ez2EJNvml5U2VhBfDgGWzVyI37ejK/l5JFo8njJXL6w=");

    sd_config_defaults(&cfg);
    assert_true(sd_machine_init(&m, &cfg, "my-device-01", dk));
    sd_machine_step(&m, &boot, &a);
    assert_int_equal(a.type, SD_ACT_SEND);
    assert_int_equal(a.kind, SD_REQ_DPS_REGISTER);
    assert_true(sd_machine_request(&m, 1700000000 - 3600, &rq));
    assert_string_equal(rq.authorization,
                        "SharedAccessSignature sr=0ne00000A0A/registrations/my-device-01"
                        "&sig=ER6%2Bcr4KlbCJ6zy8FKgj7%2BXbkLr0eOnKM5961Brkgnw%3D&skn=registration&se=1700000000");

    /* The same key used directly (individual enrollment). */
    assert_true(sd_crypto_sas("0ne00000A0A/registrations/my-device-01", group, 32, 1700000000, sas, sizeof sas));
    assert_string_equal(sas, "SharedAccessSignature sr=0ne00000A0A/registrations/my-device-01"
                             "&sig=llZMrDSFjWNDj3slAfawpcg0IAQW3gFm4gr2w9266p0%3D&skn=registration&se=1700000000");
    assert_false(sd_crypto_sas("0ne00000A0A/registrations/my-device-01", group, 32, 1700000000, sas, 100));
}

static void test_crypto_helpers(void **unused)
{
    char out[32];
    unsigned char raw[8];
    (void)unused;
    assert_true(sd_crypto_url_encode("a+b/c=d e-_.~", out, sizeof out));
    assert_string_equal(out, "a%2Bb%2Fc%3Dd%20e-_.~");
    assert_false(sd_crypto_url_encode("+++", out, 9));
    assert_true(sd_crypto_url_encode("+++", out, 10));
    assert_int_equal(sd_crypto_b64_decode("YWJj", raw, sizeof raw), 3);
    assert_int_equal(sd_crypto_b64_decode("YWI=", raw, sizeof raw), 2);
    assert_int_equal(sd_crypto_b64_decode("YQ==", raw, sizeof raw), 1);
    assert_int_equal(sd_crypto_b64_decode("YWJ", raw, sizeof raw), -1);
    assert_int_equal(sd_crypto_b64_decode("Y=Jj", raw, sizeof raw), -1);
    assert_int_equal(sd_crypto_b64_decode("YWJjYWJjYWJj", raw, sizeof raw), -1); /* 9 bytes > 8 */
    assert_false(sd_crypto_b64_encode((const unsigned char *)"abc", 3, out, 4));
}

/* The SAS the control plane gets: sr = {tenant}/registrations/{id}. */
static void test_cp_request(void **unused)
{
    struct rig r;
    struct sd_request rq;
    char want[512];
    static const unsigned char key[SD_KEY_LEN] = {1, 2, 3};
    (void)unused;
    rig_config(&r);
    rig_start(&r, NULL);
    expect_send(&r, SD_REQ_LOCATE);
    assert_int_equal(r.a.timeout_ms, 30000);
    request(&r, &rq);
    assert_int_equal(rq.target, SD_TARGET_CP);
    assert_string_equal(rq.method, "POST");
    assert_string_equal(rq.host, "127.0.0.1:8080");
    assert_string_equal(rq.path, "/v1/tenants/acme/registrations/dev-1/locate");
    assert_string_equal(rq.body, "");
    assert_true(sd_crypto_sas("acme/registrations/dev-1", key, SD_KEY_LEN, WALL + 3600, want, sizeof want));
    assert_string_equal(rq.authorization, want);

    respond(&r, 200, -1, HERE());
    expect_send(&r, SD_REQ_DPS_REGISTER);
    request(&r, &rq);
    assert_int_equal(rq.target, SD_TARGET_DPS);
    assert_true(rq.tls);
    assert_string_equal(rq.method, "PUT");
    assert_string_equal(rq.host, "127.0.0.1:9443");
    assert_string_equal(rq.path, "/0ne0000EW10/registrations/dev-1/register?api-version=2019-03-31");
    assert_string_equal(rq.body, "{\"registrationId\":\"dev-1\"}");
    assert_true(sd_crypto_sas("0ne0000EW10/registrations/dev-1", key, SD_KEY_LEN, WALL + 3600, want, sizeof want));
    assert_string_equal(rq.authorization, want);

    respond(&r, 202, -1, ASSIGNING);
    fire(&r);
    request(&r, &rq);
    assert_string_equal(rq.method, "GET");
    assert_string_equal(rq.path, "/0ne0000EW10/registrations/dev-1/operations/5.abc.d-e?api-version=2019-03-31");
    respond(&r, 200, -1, ASSIGNED("hub-1.example"));
    assert_int_equal(r.a.type, SD_ACT_PERSIST);
    assert_string_equal(sd_machine_state(&r.m)->assigned_hub, "hub-1.example");
    assert_string_equal(sd_machine_state(&r.m)->stamp, "eu-west-1");
    assert_int_equal(sd_machine_state(&r.m)->flags, SD_STATE_ASSIGNED | SD_STATE_HUB);
    assert_false(sd_machine_request(&r.m, WALL, &rq)); /* nothing pending */
    persisted(&r);
    assert_int_equal(r.a.type, SD_ACT_READY);
    assert_int_equal(sd_machine_phase(&r.m), SD_PH_READY);
}

/* ---- backoff ---- */

static void test_backoff_full_jitter(void **unused)
{
    int distinct_first = 0;
    int64_t first_prev = -1;
    bool saw_cap_region = false;
    (void)unused;
    for (uint64_t seed = 1; seed <= 200; seed++) {
        struct rig r;
        rig_config(&r);
        r.cfg.seed = seed;
        r.cfg.breaker_threshold = 1000; /* keep the breaker out of it */
        r.cfg.backoff_base_ms = 100;
        r.cfg.backoff_cap_ms = 10000;
        rig_start(&r, NULL);
        for (int n = 0; n < 12; n++) {
            int64_t ceiling = 100ll << n;
            int64_t sent = r.now, delay;
            if (ceiling > 10000)
                ceiling = 10000;
            io_error(&r);
            assert_int_equal(r.a.type, SD_ACT_SLEEP);
            delay = r.a.until_ms - sent;
            assert_true(delay >= 0 && delay <= ceiling);
            if (n == 0) {
                distinct_first += delay != first_prev;
                first_prev = delay;
            }
            if (n >= 8 && delay > 8000)
                saw_cap_region = true;
            fire(&r);
            expect_send(&r, SD_REQ_LOCATE);
        }
    }
    assert_true(distinct_first > 100); /* jittered, not constant */
    assert_true(saw_cap_region);       /* and it does grow to the cap */
}

/* A success resets the exponent. */
static void test_backoff_resets_on_success(void **unused)
{
    struct rig r;
    (void)unused;
    rig_config(&r);
    r.cfg.backoff_base_ms = 100;
    r.cfg.breaker_threshold = 100;
    rig_start(&r, NULL);
    for (int i = 0; i < 6; i++) {
        io_error(&r);
        fire(&r);
    }
    respond(&r, 200, -1, HERE());
    expect_send(&r, SD_REQ_DPS_REGISTER);
    for (int i = 0; i < 20; i++) {
        int64_t sent = r.now;
        io_error(&r);
        assert_true(r.a.until_ms - sent <= 100);
        fire(&r);
        respond(&r, 202, -1, ASSIGNING); /* a success: the next failure starts over */
        fire(&r);
    }
}

/* ---- 429 ---- */

static void test_429_retry_after_exact(void **unused)
{
    struct rig r;
    (void)unused;
    rig_config(&r);
    r.cfg.breaker_threshold = 2;
    rig_start(&r, NULL);
    for (int i = 0; i < 20; i++) {
        int64_t sent = r.now;
        respond(&r, 429, 7 + i, NULL);
        assert_int_equal(r.a.type, SD_ACT_SLEEP);
        assert_int_equal(r.a.until_ms - sent, (7 + i) * 1000);
        assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_CLOSED); /* 429 never opens it */
        fire(&r);
        expect_send(&r, SD_REQ_LOCATE);
    }
    respond(&r, 429, 0, NULL); /* Retry-After: 0 means now */
    assert_int_equal(r.a.until_ms, r.now);
}

static void test_429_without_header(void **unused)
{
    (void)unused;
    for (uint64_t seed = 1; seed <= 100; seed++) {
        struct rig r;
        rig_config(&r);
        r.cfg.seed = seed;
        rig_start(&r, NULL);
        for (int i = 0; i < 5; i++) {
            int64_t sent = r.now;
            respond(&r, 429, -1, NULL);
            assert_true(r.a.until_ms - sent >= 1000);
            assert_true(r.a.until_ms - sent <= (1000ll << i) + 1000);
            assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_CLOSED);
            fire(&r);
        }
    }
}

/* Retry-After is capped at retry_after_max_ms (default 10 min) on 429, 5xx and DPS polls. */
static void test_retry_after_cap(void **unused)
{
    struct rig r;
    int64_t sent;
    (void)unused;
    rig_config(&r);
    r.cfg.breaker_threshold = 50;
    rig_start(&r, NULL);
    assert_int_equal(r.cfg.retry_after_max_ms, 600000); /* the documented default */
    sent = r.now;
    respond(&r, 429, 86400, NULL); /* a day: capped */
    assert_int_equal(r.a.until_ms - sent, 600000);
    fire(&r);
    sent = r.now;
    respond(&r, 429, 600, NULL); /* exactly the cap: honoured */
    assert_int_equal(r.a.until_ms - sent, 600000);
    fire(&r);
    sent = r.now;
    respond(&r, 429, 2147483647, NULL); /* the largest value a parser hands over: no overflow */
    assert_int_equal(r.a.until_ms - sent, 600000);
    fire(&r);

    rig_config(&r);
    r.cfg.retry_after_max_ms = 30000;
    r.cfg.breaker_threshold = 50;
    rig_start(&r, NULL);
    sent = r.now;
    respond(&r, 429, 31, NULL);
    assert_int_equal(r.a.until_ms - sent, 30000);
    fire(&r);
    sent = r.now;
    respond(&r, 429, 29, NULL); /* below the cap: exact */
    assert_int_equal(r.a.until_ms - sent, 29000);
    fire(&r);
    sent = r.now;
    respond(&r, 503, 3600, NULL); /* 5xx: capped too (above the 5 s floor) */
    assert_int_equal(r.a.until_ms - sent, 30000);
    fire(&r);
    expect_send(&r, SD_REQ_LOCATE);
    respond(&r, 200, -1, HERE());
    sent = r.now;
    respond(&r, 202, 3600, ASSIGNING); /* DPS poll: capped */
    assert_int_equal(sd_machine_phase(&r.m), SD_PH_POLL_WAIT);
    assert_int_equal(r.a.until_ms - sent, 30000);
    fire(&r);
    expect_send(&r, SD_REQ_DPS_POLL);

    /* a cap under the poll minimum: the poll minimum still holds */
    rig_config(&r);
    r.cfg.retry_after_max_ms = 1000;
    rig_start(&r, NULL);
    respond(&r, 200, -1, HERE());
    sent = r.now;
    respond(&r, 202, 60, ASSIGNING);
    assert_int_equal(r.a.until_ms - sent, 2000);
}

/* ---- 5xx ---- */

static void test_5xx_floor(void **unused)
{
    struct rig r;
    int64_t sent;
    (void)unused;
    for (uint64_t seed = 1; seed <= 100; seed++) {
        rig_config(&r);
        r.cfg.seed = seed;
        rig_start(&r, NULL);
        sent = r.now;
        respond(&r, 500, -1, NULL);
        assert_true(r.a.until_ms - sent >= 5000);
    }
    rig_config(&r);
    r.cfg.breaker_threshold = 10;
    rig_start(&r, NULL);
    sent = r.now;
    respond(&r, 503, 2, NULL); /* a smaller Retry-After still waits the floor */
    assert_int_equal(r.a.until_ms - sent, 5000);
    fire(&r);
    sent = r.now;
    respond(&r, 503, 9, NULL); /* a larger one is honoured */
    assert_int_equal(r.a.until_ms - sent, 9000);
    fire(&r);
    expect_send(&r, SD_REQ_LOCATE);
}

/* ---- 401/403/404: full re-registration ---- */

static void test_auth_errors_reregister(void **unused)
{
    static const int codes[] = {401, 403, 404};
    (void)unused;
    for (size_t i = 0; i < 3; i++) {
        struct rig r;
        struct sd_state st = cached_state();
        rig_config(&r);
        rig_start(&r, &st);
        expect_send(&r, SD_REQ_LOOKUP);
        respond(&r, codes[i], -1, NULL);
        assert_int_equal(r.a.type, SD_ACT_SLEEP);
        assert_int_equal(sd_machine_state(&r.m)->flags & (SD_STATE_ASSIGNED | SD_STATE_HUB), 0);
        assert_string_equal(sd_machine_state(&r.m)->assigned_hub, "");
        assert_int_equal(r.persists, 0); /* the file is rewritten only when the new one is known */
        fire(&r);
        expect_send(&r, SD_REQ_LOCATE);
    }
    /* At the DPS too. */
    {
        struct rig r;
        rig_config(&r);
        rig_start(&r, NULL);
        respond(&r, 200, -1, HERE());
        expect_send(&r, SD_REQ_DPS_REGISTER);
        respond(&r, 404, -1, NULL);
        fire(&r);
        expect_send(&r, SD_REQ_LOCATE);
    }
}

/* ---- 410, 400, 409 ---- */

static void test_410_retires(void **unused)
{
    struct rig r, r2;
    struct sd_state st = cached_state(), saved;
    (void)unused;
    rig_config(&r);
    rig_start(&r, &st);
    respond(&r, 410, -1, "{\"error\":\"device_retired\"}");
    assert_int_equal(r.a.type, SD_ACT_PERSIST);
    assert_true(sd_machine_state(&r.m)->flags & SD_STATE_RETIRED);
    persisted(&r);
    assert_int_equal(r.a.type, SD_ACT_RETIRED);
    ev_type(&r, SD_EV_REPROVISION);
    assert_int_equal(r.a.type, SD_ACT_RETIRED);

    saved = *sd_machine_state(&r.m);
    rig_config(&r2);
    rig_start(&r2, &saved);
    assert_int_equal(r2.a.type, SD_ACT_RETIRED);
    ev_type(&r2, SD_EV_NET_UP);
    ev_type(&r2, SD_EV_TIMER);
    assert_int_equal(r2.a.type, SD_ACT_RETIRED);
    for (int k = 0; k < SD_REQ_KIND_COUNT; k++)
        assert_int_equal(r2.sends[k], 0);
}

static void test_4xx_fails(void **unused)
{
    struct rig r;
    (void)unused;
    rig_config(&r);
    rig_start(&r, NULL);
    respond(&r, 400, -1, "{\"error\":\"invalid_value\"}");
    assert_int_equal(r.a.type, SD_ACT_FAILED);
    assert_int_equal(sd_machine_phase(&r.m), SD_PH_FAILED);
    assert_non_null(strstr(sd_machine_error(&r.m), "400"));
    ev_type(&r, SD_EV_TIMER);
    assert_int_equal(r.a.type, SD_ACT_FAILED);

    rig_config(&r);
    rig_start(&r, NULL);
    respond(&r, 409, -1, NULL); /* 409 is retried only from /provision */
    assert_int_equal(r.a.type, SD_ACT_FAILED);

    rig_config(&r);
    r.cfg.approach = SD_APPROACH_PROXY;
    rig_start(&r, NULL);
    expect_send(&r, SD_REQ_PROVISION);
    respond(&r, 409, -1, "{\"error\":\"assignment_changed\"}");
    fire(&r);
    expect_send(&r, SD_REQ_PROVISION);

    /* 410 from the DPS is not end of life. */
    rig_config(&r);
    rig_start(&r, NULL);
    respond(&r, 200, -1, HERE());
    respond(&r, 410, -1, NULL);
    assert_int_equal(r.a.type, SD_ACT_FAILED);
}

static void test_transport_errors_back_off(void **unused)
{
    struct rig r;
    (void)unused;
    rig_config(&r);
    rig_start(&r, NULL);
    io_error(&r);
    assert_int_equal(r.a.type, SD_ACT_SLEEP);
    assert_int_equal(sd_machine_phase(&r.m), SD_PH_BACKOFF);
    ev_type(&r, SD_EV_IO_ERROR); /* stray: nothing outstanding */
    assert_int_equal(r.a.type, SD_ACT_SLEEP);
    fire(&r);
    expect_send(&r, SD_REQ_LOCATE);
    respond(&r, 302, -1, NULL); /* a redirect is not followed: backoff */
    assert_int_equal(r.a.type, SD_ACT_SLEEP);
}

/* ---- the circuit breaker ---- */

static void test_breaker(void **unused)
{
    struct rig r;
    int64_t opened;
    (void)unused;
    rig_config(&r);
    r.cfg.breaker_threshold = 3;
    r.cfg.breaker_cooldown_ms = 60000;
    rig_start(&r, NULL);
    for (int i = 0; i < 2; i++) {
        io_error(&r);
        assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_CLOSED);
        fire(&r);
    }
    opened = r.now;
    respond(&r, 500, -1, NULL);
    assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_OPEN);
    assert_true(r.a.until_ms >= opened + 60000);
    /* No SEND before the cooldown, however often the timer fires. */
    for (int64_t t = opened; t < opened + 60000; t += 7000) {
        r.now = t;
        ev_type(&r, SD_EV_TIMER);
        assert_int_equal(r.a.type, SD_ACT_SLEEP);
    }
    fire(&r);
    expect_send(&r, SD_REQ_LOCATE); /* the half-open probe */
    assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_HALF_OPEN);
    opened = r.now;
    io_error(&r); /* the probe fails: open again */
    assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_OPEN);
    assert_true(r.a.until_ms >= opened + 60000);
    fire(&r);
    assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_HALF_OPEN);
    respond(&r, 429, 3, NULL); /* throttled probe: not a failure, still half-open */
    assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_HALF_OPEN);
    fire(&r);
    respond(&r, 200, -1, HERE()); /* success closes it */
    assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_CLOSED);
    expect_send(&r, SD_REQ_DPS_REGISTER);
    /* Counting starts over: two failures do not open it. */
    io_error(&r);
    fire(&r);
    io_error(&r);
    assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_CLOSED);
}

static void test_breaker_never_opens_on_429(void **unused)
{
    struct rig r;
    (void)unused;
    rig_config(&r);
    r.cfg.breaker_threshold = 2;
    rig_start(&r, NULL);
    for (int i = 0; i < 50; i++) {
        respond(&r, 429, i % 2 ? 1 : -1, NULL);
        assert_int_equal(sd_machine_breaker(&r.m), SD_BREAKER_CLOSED);
        fire(&r);
    }
}

/* ---- network down / up ---- */

static void test_offline(void **unused)
{
    struct rig r;
    struct sd_event late = {.type = SD_EV_RESPONSE, .status = 200};
    (void)unused;
    late.body = HERE();
    late.body_len = strlen(late.body);
    for (uint64_t seed = 1; seed <= 100; seed++) {
        int64_t up;
        rig_config(&r);
        r.cfg.seed = seed;
        r.cfg.resume_jitter_ms = 3000;
        rig_start(&r, NULL);
        expect_send(&r, SD_REQ_LOCATE);
        ev_type(&r, SD_EV_NET_DOWN); /* during the request */
        assert_int_equal(r.a.type, SD_ACT_WAIT);
        assert_int_equal(sd_machine_phase(&r.m), SD_PH_OFFLINE);
        rig_event(&r, late); /* a late answer is ignored */
        assert_int_equal(r.a.type, SD_ACT_WAIT);
        for (int i = 0; i < 5; i++) {
            r.now += 100000;
            ev_type(&r, SD_EV_TIMER);
            assert_int_equal(r.a.type, SD_ACT_WAIT);
        }
        up = r.now;
        ev_type(&r, SD_EV_NET_UP);
        assert_int_equal(r.a.type, SD_ACT_SLEEP);
        assert_true(r.a.until_ms >= up && r.a.until_ms < up + 3000);
        fire(&r);
        expect_send(&r, SD_REQ_LOCATE);
        assert_int_equal(r.sends[SD_REQ_LOCATE], 2);
    }
}

/* NET_DOWN during a backoff: the deadline still holds after NET_UP. */
static void test_offline_keeps_backoff(void **unused)
{
    struct rig r;
    int64_t due;
    (void)unused;
    rig_config(&r);
    rig_start(&r, NULL);
    respond(&r, 429, 30, NULL);
    due = r.a.until_ms;
    ev_type(&r, SD_EV_NET_DOWN);
    assert_int_equal(r.a.type, SD_ACT_WAIT);
    r.now += 1000;
    ev_type(&r, SD_EV_NET_UP);
    assert_int_equal(r.a.until_ms, due);
    /* NET_DOWN before the timer fires and the step is due: no SEND. */
    ev_type(&r, SD_EV_NET_DOWN);
    r.now = due;
    ev_type(&r, SD_EV_TIMER);
    assert_int_equal(r.a.type, SD_ACT_WAIT);
    ev_type(&r, SD_EV_NET_UP);
    fire(&r);
    expect_send(&r, SD_REQ_LOCATE);
}

/* Offline before BOOT, and a reprovision command at READY while offline: nothing is sent. */
static void test_offline_at_boot_and_ready(void **unused)
{
    struct rig r;
    static const unsigned char key[SD_KEY_LEN] = {1};
    struct sd_event ev = {.type = SD_EV_NET_DOWN, .now_ms = T0};
    (void)unused;
    rig_config(&r);
    sd_config_defaults(&r.cfg);
    assert_true(sd_machine_init(&r.m, &r.cfg, REGID, key));
    sd_machine_step(&r.m, &ev, &r.a);
    assert_int_equal(r.a.type, SD_ACT_WAIT);
    ev_type(&r, SD_EV_BOOT);
    assert_int_equal(r.a.type, SD_ACT_WAIT);
    assert_int_equal(sd_machine_phase(&r.m), SD_PH_OFFLINE);
    ev_type(&r, SD_EV_NET_UP);
    fire(&r);
    provision_to_ready(&r);
    ev_type(&r, SD_EV_NET_DOWN);
    assert_int_equal(r.a.type, SD_ACT_READY);
    ev_type(&r, SD_EV_REPROVISION);
    assert_int_equal(r.a.type, SD_ACT_WAIT);
    assert_int_equal(r.sends[SD_REQ_REPROVISION], 0);
    r.now += 5000;
    ev_type(&r, SD_EV_NET_UP);
    assert_true(r.a.until_ms >= r.now && r.a.until_ms < r.now + 1000);
    fire(&r);
    expect_send(&r, SD_REQ_REPROVISION);
}

/* ---- stagger ---- */

static void test_stagger(void **unused)
{
    int64_t prev = -1;
    int distinct = 0;
    (void)unused;
    for (uint64_t seed = 1; seed <= 500; seed++) {
        struct rig r;
        rig_config(&r);
        r.cfg.seed = seed;
        r.cfg.stagger_ms = 600000;
        rig_start(&r, NULL);
        assert_int_equal(r.a.type, SD_ACT_SLEEP);
        assert_int_equal(sd_machine_phase(&r.m), SD_PH_STAGGER);
        assert_true(r.a.until_ms >= T0 && r.a.until_ms < T0 + 600000);
        distinct += r.a.until_ms != prev;
        prev = r.a.until_ms;
        ev_type(&r, SD_EV_TIMER); /* early: sleep again */
        assert_int_equal(r.a.type, SD_ACT_SLEEP);
        fire(&r);
        expect_send(&r, SD_REQ_LOCATE);
    }
    assert_true(distinct > 450);
    /* The same seed and id give the same delay (reproducible runs). */
    {
        struct rig a, b;
        rig_config(&a);
        rig_config(&b);
        a.cfg.stagger_ms = b.cfg.stagger_ms = 600000;
        rig_start(&a, NULL);
        rig_start(&b, NULL);
        assert_int_equal(a.a.until_ms, b.a.until_ms);
    }
}

/* ---- warm boots ---- */

static void test_warm_boot_same_place(void **unused)
{
    struct rig r;
    struct sd_state st = cached_state();
    (void)unused;
    rig_config(&r);
    r.cfg.stagger_ms = 600000; /* not applied to a warm boot */
    rig_start(&r, &st);
    expect_send(&r, SD_REQ_LOOKUP);
    respond(&r, 200, -1, HERE());
    assert_int_equal(r.a.type, SD_ACT_READY);
    assert_int_equal(r.persists, 0);
    assert_int_equal(r.sends[SD_REQ_LOOKUP], 1);
    for (int k = 0; k < SD_REQ_KIND_COUNT; k++)
        if (k != SD_REQ_LOOKUP)
            assert_int_equal(r.sends[k], 0);
    assert_string_equal(sd_machine_state(&r.m)->assigned_hub, "hub-1.example");
}

static void test_warm_boot_jitter(void **unused)
{
    struct rig r;
    struct sd_state st = cached_state();
    (void)unused;
    rig_config(&r);
    r.cfg.boot_jitter_ms = 5000;
    rig_start(&r, &st);
    assert_int_equal(r.a.type, SD_ACT_SLEEP);
    assert_true(r.a.until_ms >= T0 && r.a.until_ms < T0 + 5000);
    fire(&r);
    expect_send(&r, SD_REQ_LOOKUP);
}

static void test_warm_boot_moved(void **unused)
{
    struct rig r;
    struct sd_state st = cached_state();
    struct sd_request rq;
    (void)unused;
    rig_config(&r);
    rig_start(&r, &st);
    expect_send(&r, SD_REQ_LOOKUP);
    respond(&r, 200, -1, THERE());
    expect_send(&r, SD_REQ_DPS_REGISTER);
    request(&r, &rq);
    assert_string_equal(rq.host, "127.0.0.1:9444");
    assert_string_equal(rq.path, "/0ne0000EW20/registrations/dev-1/register?api-version=2019-03-31");
    respond(&r, 200, -1, ASSIGNED("hub-7.example")); /* assigned at once, no polling */
    assert_int_equal(r.a.type, SD_ACT_PERSIST);
    assert_string_equal(sd_machine_state(&r.m)->stamp, "eu-west-2");
    assert_string_equal(sd_machine_state(&r.m)->id_scope, "0ne0000EW20");
    assert_string_equal(sd_machine_state(&r.m)->dps_endpoint, "127.0.0.1:9444");
    assert_string_equal(sd_machine_state(&r.m)->assigned_hub, "hub-7.example");
    persisted(&r);
    assert_int_equal(r.a.type, SD_ACT_READY);
    assert_int_equal(r.persists, 1);
}

/* A state that is not this device's (or is garbage) is a cold boot. */
static void test_foreign_state_ignored(void **unused)
{
    struct rig r;
    struct sd_state st = cached_state();
    (void)unused;
    snprintf(st.registration_id, sizeof st.registration_id, "dev-2");
    rig_config(&r);
    rig_start(&r, &st);
    expect_send(&r, SD_REQ_LOCATE);

    st = cached_state();
    snprintf(st.tenant_id, sizeof st.tenant_id, "other");
    rig_config(&r);
    rig_start(&r, &st);
    expect_send(&r, SD_REQ_LOCATE);

    st = cached_state();
    memset(st.stamp, 'x', sizeof st.stamp); /* not terminated */
    rig_config(&r);
    rig_start(&r, &st);
    expect_send(&r, SD_REQ_LOCATE);
}

/* ---- approach 2 ---- */

static void test_approach2(void **unused)
{
    struct rig r;
    struct sd_request rq;
    char extra[256];
    (void)unused;
    rig_config(&r);
    r.cfg.approach = SD_APPROACH_PROXY;
    rig_start(&r, NULL);
    expect_send(&r, SD_REQ_PROVISION);
    request(&r, &rq);
    assert_string_equal(rq.path, "/v1/tenants/acme/registrations/dev-1/provision");
    assert_string_equal(rq.body, "");
    snprintf(extra, sizeof extra,
             ",\"assignedHub\":\"hub-3.example\",\"deviceId\":\"" REGID "\",\"status\":\"assigned\","
             "\"substatus\":\"initialAssignment\"");
    respond(&r, 200, -1, assignment(2, "eu-west-1", "0ne0000EW10", "127.0.0.1:9443", extra));
    assert_int_equal(r.a.type, SD_ACT_PERSIST);
    assert_string_equal(sd_machine_state(&r.m)->assigned_hub, "hub-3.example");
    assert_string_equal(sd_machine_state(&r.m)->stamp, "eu-west-1");
    persisted(&r);
    assert_int_equal(r.a.type, SD_ACT_READY);
    for (int k = SD_REQ_DPS_REGISTER; k <= SD_REQ_DPS_LOOKUP; k++)
        assert_int_equal(r.sends[k], 0);

    /* A /provision answer without the hub is unusable. */
    rig_config(&r);
    r.cfg.approach = SD_APPROACH_PROXY;
    rig_start(&r, NULL);
    respond(&r, 200, -1, HERE());
    assert_int_equal(r.a.type, SD_ACT_SLEEP);
}

/* ---- DPS polling ---- */

static void test_poll_spacing(void **unused)
{
    struct rig r;
    int64_t t;
    (void)unused;
    rig_config(&r);
    rig_start(&r, NULL);
    respond(&r, 200, -1, HERE());
    t = r.now;
    respond(&r, 202, -1, ASSIGNING);
    assert_int_equal(sd_machine_phase(&r.m), SD_PH_POLL_WAIT);
    assert_int_equal(r.a.until_ms - t, 2000);
    r.now += 1999;
    ev_type(&r, SD_EV_TIMER); /* early */
    assert_int_equal(r.a.type, SD_ACT_SLEEP);
    fire(&r);
    expect_send(&r, SD_REQ_DPS_POLL);
    t = r.now;
    respond(&r, 202, 1, ASSIGNING); /* a smaller Retry-After: the 2 s minimum */
    assert_int_equal(r.a.until_ms - t, 2000);
    fire(&r);
    t = r.now;
    respond(&r, 202, 9, ASSIGNING); /* a larger one is honoured */
    assert_int_equal(r.a.until_ms - t, 9000);
    fire(&r);
    expect_send(&r, SD_REQ_DPS_POLL);
    /* assigning without an operation id: PUT again (as the SDKs do). */
    respond(&r, 202, -1, "{\"status\":\"assigning\"}");
    fire(&r);
    expect_send(&r, SD_REQ_DPS_REGISTER);
}

static void test_max_polls(void **unused)
{
    struct rig r;
    (void)unused;
    rig_config(&r);
    r.cfg.max_polls = 3;
    rig_start(&r, NULL);
    respond(&r, 200, -1, HERE());
    respond(&r, 202, -1, ASSIGNING);
    for (int i = 0; i < 3; i++) {
        fire(&r);
        expect_send(&r, SD_REQ_DPS_POLL);
        respond(&r, 202, -1, ASSIGNING);
    }
    assert_int_equal(r.sends[SD_REQ_DPS_POLL], 3);
    assert_int_equal(sd_machine_phase(&r.m), SD_PH_BACKOFF);
    fire(&r);
    expect_send(&r, SD_REQ_DPS_REGISTER);
    assert_int_equal(r.sends[SD_REQ_DPS_REGISTER], 2);
}

static void test_dps_failed_and_disabled(void **unused)
{
    struct rig r;
    (void)unused;
    rig_config(&r);
    rig_start(&r, NULL);
    respond(&r, 200, -1, HERE());
    respond(&r, 202, -1, ASSIGNING);
    fire(&r);
    respond(&r, 200, -1, "{\"operationId\":\"5.abc.d-e\",\"status\":\"failed\",\"registrationState\":{}}");
    assert_int_equal(sd_machine_phase(&r.m), SD_PH_BACKOFF);
    fire(&r);
    expect_send(&r, SD_REQ_DPS_REGISTER);
    respond(&r, 200, -1, "{\"operationId\":\"5.abc.d-e\",\"status\":\"Disabled\"}");
    assert_int_equal(r.a.type, SD_ACT_FAILED);
    assert_non_null(strstr(sd_machine_error(&r.m), "disabled"));
}

/* ---- reprovisioning ---- */

static void test_reprovision_moved(void **unused)
{
    struct rig r;
    struct sd_request rq;
    (void)unused;
    rig_config(&r);
    rig_start(&r, NULL);
    provision_to_ready(&r);
    rig_event(&r, (struct sd_event){.type = SD_EV_REPROVISION, .reason = "operator said \"move\""});
    expect_send(&r, SD_REQ_REPROVISION);
    request(&r, &rq);
    assert_string_equal(rq.path, "/v1/tenants/acme/registrations/dev-1/reprovision");
    assert_string_equal(rq.body, "{\"reason\":\"operator said \\\"move\\\"\"}");
    respond(&r, 200, -1, assignment(2, "eu-west-2", "0ne0000EW20", "127.0.0.1:9444",
                                    ",\"moved\":true,\"reason\":\"stamp draining\""));
    expect_send(&r, SD_REQ_DPS_REGISTER);
    request(&r, &rq);
    assert_string_equal(rq.host, "127.0.0.1:9444");
    respond(&r, 200, -1, ASSIGNED("hub-9.example"));
    persisted(&r);
    assert_int_equal(r.a.type, SD_ACT_READY);
    assert_string_equal(sd_machine_state(&r.m)->stamp, "eu-west-2");
    assert_string_equal(sd_machine_state(&r.m)->assigned_hub, "hub-9.example");
}

static void test_reprovision_not_moved(void **unused)
{
    struct rig r;
    struct sd_request rq;
    int regs;
    (void)unused;
    rig_config(&r);
    rig_start(&r, NULL);
    provision_to_ready(&r);
    regs = r.sends[SD_REQ_DPS_REGISTER];
    ev_type(&r, SD_EV_REPROVISION); /* no reason: no body */
    expect_send(&r, SD_REQ_REPROVISION);
    request(&r, &rq);
    assert_string_equal(rq.body, "");
    respond(&r, 200, -1, assignment(2, "eu-west-1", "0ne0000EW10", "127.0.0.1:9443", ",\"moved\":false"));
    assert_int_equal(r.a.type, SD_ACT_READY);
    assert_int_equal(r.sends[SD_REQ_DPS_REGISTER], regs);
    assert_int_equal(r.persists, 1);
}

/* A reprovision command while a step waits (backoff) replaces the step. */
static void test_reprovision_while_waiting(void **unused)
{
    struct rig r;
    (void)unused;
    rig_config(&r);
    rig_start(&r, NULL);
    respond(&r, 200, -1, HERE());
    respond(&r, 503, -1, NULL);
    rig_event(&r, (struct sd_event){.type = SD_EV_REPROVISION, .reason = "stuck"});
    assert_int_equal(r.a.type, SD_ACT_SLEEP);
    fire(&r);
    expect_send(&r, SD_REQ_REPROVISION);
    /* And one that arrives mid-request waits for READY. */
    rig_config(&r);
    rig_start(&r, NULL);
    ev_type(&r, SD_EV_REPROVISION);
    assert_int_equal(r.a.type, SD_ACT_WAIT); /* the LOCATE is still outstanding */
    respond(&r, 200, -1, HERE());
    respond(&r, 200, -1, ASSIGNED("hub-1.example"));
    persisted(&r);
    expect_send(&r, SD_REQ_REPROVISION);
}

static void test_hub_rejected(void **unused)
{
    struct rig r;
    struct sd_request rq;
    (void)unused;
    rig_config(&r);
    rig_start(&r, NULL);
    provision_to_ready(&r);
    ev_type(&r, SD_EV_HUB_REJECTED);
    expect_send(&r, SD_REQ_REPROVISION);
    request(&r, &rq);
    assert_non_null(strstr(rq.body, "\"reason\":\"the hub rejected the device\""));
    respond(&r, 200, -1, assignment(2, "eu-west-1", "0ne0000EW10", "127.0.0.1:9443", ",\"moved\":false"));
    expect_send(&r, SD_REQ_DPS_REGISTER); /* the cached hub is wrong: register again */
    respond(&r, 200, -1, ASSIGNED("hub-2.example"));
    persisted(&r);
    assert_int_equal(r.a.type, SD_ACT_READY);
    assert_string_equal(sd_machine_state(&r.m)->assigned_hub, "hub-2.example");

    /* Before READY there is no hub to reject: ignored. */
    rig_config(&r);
    rig_start(&r, NULL);
    io_error(&r);
    ev_type(&r, SD_EV_HUB_REJECTED);
    assert_int_equal(r.a.type, SD_ACT_SLEEP);
    fire(&r);
    expect_send(&r, SD_REQ_LOCATE);
}

/* ---- DPS only, X.509 ---- */

static void dps_only(struct rig *r)
{
    rig_config(r);
    r->cfg.cp_host = NULL;
    r->cfg.tenant_id = NULL;
    r->cfg.dps_host_override = "127.0.0.1:9443";
    r->cfg.id_scope_override = "0ne0000EW10";
}

static void test_dps_only(void **unused)
{
    struct rig r;
    struct sd_state st = cached_state(), saved;
    struct sd_request rq;
    (void)unused;
    dps_only(&r);
    rig_start(&r, NULL);
    expect_send(&r, SD_REQ_DPS_REGISTER);
    respond(&r, 200, -1, ASSIGNED("hub-1.example"));
    persisted(&r);
    assert_int_equal(r.a.type, SD_ACT_READY);
    saved = *sd_machine_state(&r.m);
    assert_int_equal(saved.flags, SD_STATE_ASSIGNED | SD_STATE_HUB);
    assert_string_equal(saved.id_scope, "0ne0000EW10");

    /* Warm boot: the DPS's status lookup, same hub -> READY, no write. */
    dps_only(&r);
    rig_start(&r, &saved);
    expect_send(&r, SD_REQ_DPS_LOOKUP);
    request(&r, &rq);
    assert_string_equal(rq.method, "POST");
    assert_string_equal(rq.path, "/0ne0000EW10/registrations/dev-1?api-version=2019-03-31");
    assert_string_equal(rq.body, "{\"registrationId\":\"dev-1\"}");
    respond(&r, 200, -1,
            "{\"registrationId\":\"" REGID "\",\"assignedHub\":\"hub-1.example\",\"deviceId\":\"" REGID
            "\",\"status\":\"assigned\"}");
    assert_int_equal(r.a.type, SD_ACT_READY);
    assert_int_equal(r.persists, 0);

    /* The DPS moved it to another hub: write it, no registration. */
    st.tenant_id[0] = '\0';
    dps_only(&r);
    rig_start(&r, &st);
    expect_send(&r, SD_REQ_DPS_LOOKUP);
    respond(&r, 200, -1,
            "{\"registrationId\":\"" REGID "\",\"assignedHub\":\"hub-5.example\",\"deviceId\":\"" REGID
            "\",\"status\":\"assigned\"}");
    assert_int_equal(r.a.type, SD_ACT_PERSIST);
    assert_int_equal(r.sends[SD_REQ_DPS_REGISTER], 0);

    /* Unassigned at the DPS: register. */
    dps_only(&r);
    rig_start(&r, &saved);
    respond(&r, 200, -1, "{\"registrationId\":\"" REGID "\",\"status\":\"unassigned\"}");
    expect_send(&r, SD_REQ_DPS_REGISTER);

    /* 404 at the lookup: re-register (there is no locate without a control plane). */
    dps_only(&r);
    rig_start(&r, &saved);
    respond(&r, 404, -1, NULL);
    fire(&r);
    expect_send(&r, SD_REQ_DPS_REGISTER);
}

static void test_x509(void **unused)
{
    struct rig r;
    struct sd_request rq;
    struct sd_machine m;
    (void)unused;
    rig_config(&r);
    r.cfg.auth = SD_AUTH_X509;
    assert_non_null(sd_config_check(&r.cfg)); /* the control plane then needs a bearer token */
    r.cfg.bearer_token = "cpi_abc";
    sd_config_defaults(&r.cfg);
    assert_true(sd_machine_init(&m, &r.cfg, REGID, NULL));
    rig_start(&r, NULL);
    request(&r, &rq);
    assert_string_equal(rq.authorization, "Bearer cpi_abc");
    respond(&r, 200, -1, HERE());
    expect_send(&r, SD_REQ_DPS_REGISTER);
    request(&r, &rq);
    assert_string_equal(rq.authorization, ""); /* the client certificate is the credential */

    /* Symmetric key with a bearer token: Bearer at the CP, SAS at the DPS. */
    rig_config(&r);
    r.cfg.bearer_token = "cpi_abc";
    rig_start(&r, NULL);
    request(&r, &rq);
    assert_string_equal(rq.authorization, "Bearer cpi_abc");
    respond(&r, 200, -1, HERE());
    request(&r, &rq);
    assert_non_null(strstr(rq.authorization, "SharedAccessSignature sr=0ne0000EW10/registrations/dev-1&sig="));
}

/* ---- bad answers ---- */

static void test_bad_bodies(void **unused)
{
    char big[128], extra[300];
    const char *bad_cp[] = {
        NULL,
        "not json",
        "[1,2]",
        "{\"registrationId\":\"dev-1\"",
        assignment(2, "eu-west-1", "0ne0000EW10", "127.0.0.1:9443", ",\"registrationId\":\"dev-1\""),
        NULL, /* wrong id, filled below */
        NULL, /* oversized stamp */
        NULL, /* path-unsafe id scope */
        NULL, /* wrong tenant */
    };
    (void)unused;
    memset(big, 'a', 100);
    big[100] = '\0';
    bad_cp[5] = assignment(0, "eu-west-1", "0ne0000EW10", "127.0.0.1:9443", NULL);
    snprintf(body_buf[3], sizeof body_buf[3], "%s", bad_cp[5]);
    memcpy(strstr(body_buf[3], "dev-1"), "dev-9", 5);
    bad_cp[5] = body_buf[3];
    bad_cp[6] = assignment(1, big, "0ne0000EW10", "127.0.0.1:9443", NULL);
    for (size_t i = 0; i < sizeof bad_cp / sizeof bad_cp[0]; i++) {
        struct rig r;
        if (i == 7)
            bad_cp[7] = assignment(1, "eu-west-1", "0ne/../x", "127.0.0.1:9443", NULL);
        if (i == 8) {
            bad_cp[8] = assignment(1, "eu-west-1", "0ne0000EW10", "127.0.0.1:9443", NULL);
            memcpy(strstr(body_buf[1], "acme"), "acmf", 4);
        }
        rig_config(&r);
        rig_start(&r, NULL);
        respond(&r, 200, -1, bad_cp[i]);
        assert_int_equal(r.a.type, SD_ACT_SLEEP);
        assert_int_equal(sd_machine_phase(&r.m), SD_PH_BACKOFF);
        fire(&r);
        expect_send(&r, SD_REQ_LOCATE);
    }
    /* DPS answers. */
    snprintf(extra, sizeof extra, "{\"operationId\":\"%s\",\"status\":\"assigning\"}", big);
    {
        const char *bad_dps[] = {
            "{\"status\":\"assigned\"}",                     /* no registrationState */
            "{\"operationId\":\"a/b\",\"status\":\"assigning\"}", /* unsafe in a path */
            extra,                                           /* too long */
            "{\"operationId\":\"x\"}",                       /* no status */
            "{\"status\":\"assigned\",\"registrationState\":{\"registrationId\":\"dev-2\","
            "\"assignedHub\":\"h\",\"deviceId\":\"dev-1\"}}", /* someone else's */
            "{\"status\":\"assigned\",\"registrationState\":{\"registrationId\":\"dev-1\","
            "\"assignedHub\":\"h\\u0000x\",\"deviceId\":\"dev-1\"}}", /* embedded NUL */
        };
        for (size_t i = 0; i < sizeof bad_dps / sizeof bad_dps[0]; i++) {
            struct rig r;
            rig_config(&r);
            rig_start(&r, NULL);
            respond(&r, 200, -1, HERE());
            respond(&r, 200, -1, bad_dps[i]);
            assert_int_equal(sd_machine_phase(&r.m), SD_PH_BACKOFF);
            fire(&r);
            expect_send(&r, SD_REQ_DPS_REGISTER);
        }
    }
}

/* ---- request buffers, config, init ---- */

static void test_request_overflow(void **unused)
{
    static char token[1200];
    struct rig r;
    struct sd_request rq;
    (void)unused;
    memset(token, 'x', sizeof token - 1);
    rig_config(&r);
    r.cfg.bearer_token = token;
    rig_start(&r, NULL);
    expect_send(&r, SD_REQ_LOCATE);
    assert_false(sd_machine_request(&r.m, WALL, &rq));
    io_error(&r); /* what the driver does then */
    assert_int_equal(r.a.type, SD_ACT_SLEEP);
    assert_false(sd_machine_request(&r.m, WALL, &rq)); /* nothing pending while sleeping */
}

static void test_config_and_init(void **unused)
{
    struct sd_config c = {0};
    struct sd_machine m;
    static const unsigned char key[SD_KEY_LEN];
    (void)unused;
    sd_config_defaults(&c);
    assert_int_equal(c.backoff_base_ms, 1000);
    assert_int_equal(c.backoff_cap_ms, 300000);
    assert_int_equal(c.server_error_floor_ms, 5000);
    assert_int_equal(c.poll_min_ms, 2000);
    assert_int_equal(c.retry_after_max_ms, 600000);
    assert_int_equal(c.max_polls, 30);
    assert_int_equal(c.breaker_threshold, 5);
    assert_int_equal(c.stagger_ms, 0);
    assert_non_null(sd_config_check(&c)); /* no endpoint at all */
    assert_non_null(sd_config_check(NULL));
    c.cp_host = "cp:443";
    assert_non_null(sd_config_check(&c)); /* no tenant */
    c.tenant_id = "a/b";
    assert_non_null(sd_config_check(&c));
    c.tenant_id = "acme";
    assert_non_null(sd_config_check(&c)); /* approach 0 */
    c.approach = SD_APPROACH_LOCATE;
    assert_null(sd_config_check(&c));
    c.dps_host_override = "bad host";
    assert_non_null(sd_config_check(&c));
    c.dps_host_override = NULL;

    assert_false(sd_machine_init(&m, &c, "Dev-1", key)); /* upper case */
    assert_int_equal(sd_machine_phase(&m), SD_PH_FAILED);
    assert_true(strlen(sd_machine_error(&m)) > 0);
    assert_false(sd_machine_init(&m, &c, "dev.", key));
    assert_false(sd_machine_init(&m, &c, "", key));
    assert_false(sd_machine_init(&m, &c, REGID, NULL)); /* symmetric key without a key */
    assert_true(sd_machine_init(&m, &c, "dev-", key));
    assert_string_equal(sd_machine_error(&m), "");
    assert_string_equal(sd_phase_name(SD_PH_POLL_WAIT), "poll_wait");
    assert_string_equal(sd_req_kind_name(SD_REQ_DPS_LOOKUP), "dps_lookup");
    {
        struct sd_machine bad;
        struct sd_action a;
        struct sd_event boot = {.type = SD_EV_BOOT};
        assert_false(sd_machine_init(&bad, NULL, REGID, key));
        sd_machine_step(&bad, &boot, &a);
        assert_int_equal(a.type, SD_ACT_FAILED);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sas_known_value),
        cmocka_unit_test(test_crypto_helpers),
        cmocka_unit_test(test_cp_request),
        cmocka_unit_test(test_backoff_full_jitter),
        cmocka_unit_test(test_backoff_resets_on_success),
        cmocka_unit_test(test_429_retry_after_exact),
        cmocka_unit_test(test_429_without_header),
        cmocka_unit_test(test_retry_after_cap),
        cmocka_unit_test(test_5xx_floor),
        cmocka_unit_test(test_auth_errors_reregister),
        cmocka_unit_test(test_410_retires),
        cmocka_unit_test(test_4xx_fails),
        cmocka_unit_test(test_transport_errors_back_off),
        cmocka_unit_test(test_breaker),
        cmocka_unit_test(test_breaker_never_opens_on_429),
        cmocka_unit_test(test_offline),
        cmocka_unit_test(test_offline_keeps_backoff),
        cmocka_unit_test(test_offline_at_boot_and_ready),
        cmocka_unit_test(test_stagger),
        cmocka_unit_test(test_warm_boot_same_place),
        cmocka_unit_test(test_warm_boot_jitter),
        cmocka_unit_test(test_warm_boot_moved),
        cmocka_unit_test(test_foreign_state_ignored),
        cmocka_unit_test(test_approach2),
        cmocka_unit_test(test_poll_spacing),
        cmocka_unit_test(test_max_polls),
        cmocka_unit_test(test_dps_failed_and_disabled),
        cmocka_unit_test(test_reprovision_moved),
        cmocka_unit_test(test_reprovision_not_moved),
        cmocka_unit_test(test_reprovision_while_waiting),
        cmocka_unit_test(test_hub_rejected),
        cmocka_unit_test(test_dps_only),
        cmocka_unit_test(test_x509),
        cmocka_unit_test(test_bad_bodies),
        cmocka_unit_test(test_request_overflow),
        cmocka_unit_test(test_config_and_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
