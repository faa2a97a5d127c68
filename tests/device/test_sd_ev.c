/*
 * test_sd_ev.c - the event-driven driver (device/sd_ev.c) on its own, against
 * an in-process evhttp server on a loopback port (real sockets, one libevent
 * loop for both sides). The machines are warm devices with a control plane
 * over plain HTTP, so each asks for exactly one status lookup (POST
 * .../locate) and is READY on the canned answer "same place"; 410 retires a
 * device, a held request times out.
 *
 * Covered: keep-alive reuse under a pool capped at 2 connections (the server
 * sees at most 2, every request is answered), the FIFO order under the cap,
 * the per-request timeout (IO_ERROR, the machine backs off), the quiet drop of
 * a keep-alive connection the server closed while idle, the transparent
 * resend when the server closed it just as a request went out, the observer
 * and persist hooks' counts, the before_send hook declining a request, and the
 * timer heap with 10,000 sleeping devices (some taken out and put back by a
 * reprovision command) firing in deadline order.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "sd_ev.h"
#include "sd_machine.h"

#define TEV_TENANT "t1"
#define TEV_MAX_PEERS 64

/* ------------------------------------------------------------------ the server */

struct tev_srv {
    struct evhttp *http;
    char host[32];                    /* "127.0.0.1:port" */
    bool hold;                        /* do not answer (timeouts) */
    const char *retire_id;            /* answer 410 for this registration id */
    uint32_t requests;                /* received */
    uint32_t reprovisions;            /* of them, POST .../reprovision */
    uint16_t peers[TEV_MAX_PEERS];    /* client ports seen: one per connection */
    uint32_t npeers;
    struct evhttp_connection *last;   /* the connection of the last request */
};

static void tev_note_peer(struct tev_srv *s, struct evhttp_connection *con)
{
    char *addr = NULL;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(con, &addr, &port);
    for (uint32_t i = 0; i < s->npeers; i++)
        if (s->peers[i] == port)
            return;
    assert_true(s->npeers < TEV_MAX_PEERS);
    s->peers[s->npeers++] = port;
}

/* "/v1/tenants/t1/registrations/{id}/{route}" -> id and route */
static bool tev_parse_path(const char *uri, char *id, size_t idlen, char *route, size_t routelen)
{
    const char *prefix = "/v1/tenants/" TEV_TENANT "/registrations/";
    if (strncmp(uri, prefix, strlen(prefix)) != 0)
        return false;
    const char *p = uri + strlen(prefix), *slash = strchr(p, '/');
    if (!slash || (size_t)(slash - p) >= idlen || strlen(slash + 1) >= routelen)
        return false;
    memcpy(id, p, (size_t)(slash - p));
    id[slash - p] = '\0';
    snprintf(route, routelen, "%s", slash + 1);
    return true;
}

static void tev_reply(struct evhttp_request *req, int code, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    evbuffer_add(b, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, code, code == 200 ? "OK" : code == 410 ? "Gone" : "Not Found", b);
    evbuffer_free(b);
}

static void tev_handle(struct evhttp_request *req, void *arg)
{
    struct tev_srv *s = arg;
    char id[SD_REGID_MAX], route[32], body[512];
    s->requests++;
    s->last = evhttp_request_get_connection(req);
    tev_note_peer(s, s->last);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST ||
        !tev_parse_path(evhttp_request_get_uri(req), id, sizeof id, route, sizeof route)) {
        tev_reply(req, 404, "{}");
        return;
    }
    if (strcmp(route, "reprovision") == 0)
        s->reprovisions++;
    if (s->hold)
        return; /* never answered: evhttp frees it when the client gives up and closes */
    if (s->retire_id && strcmp(id, s->retire_id) == 0) {
        tev_reply(req, 410, "{\"error\":{\"code\":\"device_retired\"}}");
        return;
    }
    snprintf(body, sizeof body,
             "{\"registrationId\":\"%s\",\"tenantId\":\"" TEV_TENANT "\",\"geography\":\"eu\",\"region\":\"eu-west\","
             "\"stamp\":\"eu-west-1\",\"idScope\":\"0ne0000EW10\",\"dpsEndpoint\":\"127.0.0.1:9443\",\"etag\":\"1\"%s}",
             id, strcmp(route, "reprovision") == 0 ? ",\"moved\":false" : "");
    tev_reply(req, 200, body);
}

static void tev_srv_start(struct event_base *base, struct tev_srv *s)
{
    memset(s, 0, sizeof *s);
    s->http = evhttp_new(base);
    assert_non_null(s->http);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(s->http, "127.0.0.1", 0);
    assert_non_null(bs);
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    assert_int_equal(getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &len), 0);
    snprintf(s->host, sizeof s->host, "127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
    evhttp_set_gencb(s->http, tev_handle, s);
}

/* ------------------------------------------------------------------ the fleet */

struct tev {
    struct event_base *base;
    struct tev_srv srv;
    struct sd_config cfg;
    struct sd_machine *m;
    uint32_t n;
    struct sd_ev *ev;
    unsigned char key[SD_KEY_LEN];
    /* what the hooks saw */
    uint32_t sends, responses, ok200, gone410, io_errors, persists, persisted_retired;
    uint32_t ready, retired, failed, done, target;
    uint32_t before_sends;
    uint32_t *send_order;             /* devices in on_send order */
    char io_why[64];
    bool stop_on_io_error;
    uint32_t decline_dev;             /* before_send returns false for this one (UINT32_MAX: none) */
    /* the timer heap test */
    int64_t *deadline;                /* per device, while it sleeps */
    int64_t last_deadline;
    uint32_t fired, out_of_order, early;
    bool timed_out;
};

static void tev_on_send(void *ctx, uint32_t dev, enum sd_req_kind kind)
{
    struct tev *t = ctx;
    (void)kind;
    if (t->send_order && t->sends < t->n)
        t->send_order[t->sends] = dev;
    t->sends++;
}

static void tev_on_response(void *ctx, uint32_t dev, enum sd_req_kind kind, int status, int retry_after,
                            const char *body, size_t len)
{
    struct tev *t = ctx;
    (void)dev;
    (void)kind;
    (void)retry_after;
    t->responses++;
    t->ok200 += status == 200;
    t->gone410 += status == 410;
    assert_true(body != NULL && len > 0);
}

static void tev_on_io_error(void *ctx, uint32_t dev, enum sd_req_kind kind, const char *why)
{
    struct tev *t = ctx;
    (void)dev;
    (void)kind;
    t->io_errors++;
    snprintf(t->io_why, sizeof t->io_why, "%s", why);
    if (t->stop_on_io_error)
        event_base_loopbreak(t->base);
}

static void tev_on_terminal(void *ctx, uint32_t dev, enum sd_action_type a)
{
    struct tev *t = ctx;
    (void)dev;
    t->ready += a == SD_ACT_READY;
    t->retired += a == SD_ACT_RETIRED;
    t->failed += a == SD_ACT_FAILED;
    if (++t->done >= t->target)
        event_base_loopbreak(t->base);
}

static bool tev_persist(void *ctx, uint32_t dev, const struct sd_state *st)
{
    struct tev *t = ctx;
    (void)dev;
    t->persists++;
    t->persisted_retired += (st->flags & SD_STATE_RETIRED) != 0;
    return true;
}

/* Timer heap test: each sleeping device's deadline must come in order, and not early. */
static bool tev_before_send(void *ctx, uint32_t dev, enum sd_req_kind kind)
{
    struct tev *t = ctx;
    (void)kind;
    t->before_sends++;
    if (t->deadline && t->deadline[dev]) {
        int64_t d = t->deadline[dev];
        t->out_of_order += d < t->last_deadline;
        t->early += sd_ev_now_ms() < d;
        t->last_deadline = d;
        t->deadline[dev] = 0;
        t->fired++;
    }
    return dev != t->decline_dev;
}

/* (Re-)create device i: a reboot is init + BOOT. */
static void tev_init_dev(struct tev *t, uint32_t i)
{
    char regid[32];
    snprintf(regid, sizeof regid, "dev-%u", i);
    assert_true(sd_machine_init(&t->m[i], &t->cfg, regid, t->key));
}

static void tev_setup(struct tev *t, uint32_t n, uint32_t max_conns)
{
    memset(t, 0, sizeof *t);
    t->base = event_base_new();
    assert_non_null(t->base);
    tev_srv_start(t->base, &t->srv);
    sd_config_defaults(&t->cfg);
    t->cfg.cp_host = t->srv.host;
    t->cfg.cp_tls = false;
    t->cfg.tenant_id = TEV_TENANT;
    t->cfg.approach = SD_APPROACH_LOCATE;
    t->cfg.auth = SD_AUTH_SYMKEY;
    t->cfg.backoff_base_ms = 60000; /* a failed device stays in backoff for the rest of a test */
    t->cfg.seed = 7;
    t->n = n;
    t->target = n;
    t->decline_dev = UINT32_MAX;
    t->m = calloc(n, sizeof *t->m);
    t->send_order = calloc(n, sizeof *t->send_order);
    assert_non_null(t->m);
    assert_non_null(t->send_order);
    memset(t->key, 0x5a, sizeof t->key);
    for (uint32_t i = 0; i < n; i++)
        tev_init_dev(t, i);
    struct sd_ev_options o = {max_conns, 0, NULL};
    struct sd_ev_hooks h = {t, tev_on_send, tev_on_response, tev_on_io_error, tev_on_terminal, tev_persist,
                            tev_before_send};
    t->ev = sd_ev_new(t->base, t->m, n, &o, &h);
    assert_non_null(t->ev);
}

static void tev_teardown(struct tev *t)
{
    sd_ev_free(t->ev);
    evhttp_free(t->srv.http);
    event_base_free(t->base);
    free(t->m);
    free(t->send_order);
    free(t->deadline);
}

/* What a provisioned device remembers: the same place the server answers. */
static void tev_state(uint32_t i, struct sd_state *st)
{
    memset(st, 0, sizeof *st);
    st->flags = SD_STATE_ASSIGNED | SD_STATE_HUB;
    snprintf(st->registration_id, sizeof st->registration_id, "dev-%u", i);
    snprintf(st->tenant_id, sizeof st->tenant_id, TEV_TENANT);
    snprintf(st->geography, sizeof st->geography, "eu");
    snprintf(st->region, sizeof st->region, "eu-west");
    snprintf(st->stamp, sizeof st->stamp, "eu-west-1");
    snprintf(st->id_scope, sizeof st->id_scope, "0ne0000EW10");
    snprintf(st->dps_endpoint, sizeof st->dps_endpoint, "127.0.0.1:9443");
    snprintf(st->assigned_hub, sizeof st->assigned_hub, "eu-west-1-hub1.example.net");
    snprintf(st->device_id, sizeof st->device_id, "dev-%u", i);
    snprintf(st->etag, sizeof st->etag, "1");
}

static void tev_boot(struct tev *t, uint32_t i)
{
    struct sd_state st;
    tev_state(i, &st);
    sd_ev_boot(t->ev, i, &st);
}

static void tev_watchdog(evutil_socket_t fd, short what, void *arg)
{
    struct tev *t = arg;
    (void)fd;
    (void)what;
    t->timed_out = true;
    event_base_loopbreak(t->base);
}

/* Run the loop until a hook breaks it or ms passed (then timed_out). */
static void tev_run(struct tev *t, uint32_t ms)
{
    struct event *wd = evtimer_new(t->base, tev_watchdog, t);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    assert_non_null(wd);
    t->timed_out = false;
    evtimer_add(wd, &tv);
    event_base_dispatch(t->base);
    event_free(wd);
}

/* ------------------------------------------------------------------ tests */

/* 100 devices over at most 2 keep-alive connections: FIFO order, every request answered. */
static void test_keepalive_pool_fifo(void **state)
{
    struct tev t;
    struct sd_ev_stats st;
    const uint32_t n = 100;
    (void)state;
    tev_setup(&t, n, 2);
    for (uint32_t i = 0; i < n; i++)
        tev_boot(&t, i);
    /* under the cap: two connections opening with a request each, the rest queued */
    sd_ev_get_stats(t.ev, &st);
    assert_int_equal(st.conns, 2);
    assert_int_equal(st.queued, n - 2);
    assert_int_equal(t.sends, 2);
    tev_run(&t, 10000);
    assert_false(t.timed_out);
    assert_int_equal(t.ready, n);
    assert_int_equal(t.srv.requests, n);
    assert_true(t.srv.npeers <= 2);
    sd_ev_get_stats(t.ev, &st);
    assert_true(st.peak_conns <= 2);
    assert_true(st.conns_opened <= 2);
    assert_int_equal(st.requests, n);
    assert_int_equal(st.responses, n);
    assert_int_equal(st.reused, n - st.conns_opened);
    assert_int_equal(st.io_errors, 0);
    assert_int_equal(st.retries, 0);
    assert_int_equal(st.queued, 0);
    /* FIFO: the devices went out in the order they asked */
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(t.send_order[i], i);
    /* observers: one send, one 200 answer and one READY per device; no write on a warm boot */
    assert_int_equal(t.sends, n);
    assert_int_equal(t.responses, n);
    assert_int_equal(t.ok200, n);
    assert_int_equal(t.io_errors, 0);
    assert_int_equal(t.persists, 0);
    assert_int_equal(t.before_sends, n);
    tev_teardown(&t);
}

/* The hooks' counts: a 410 retires (persist hook, RETIRED), a declined request never leaves. */
static void test_hooks_counts(void **state)
{
    struct tev t;
    struct sd_ev_stats st;
    (void)state;
    tev_setup(&t, 3, 4);
    t.srv.retire_id = "dev-1";
    t.decline_dev = 2;
    t.target = 2; /* device 2 never finishes */
    for (uint32_t i = 0; i < 3; i++)
        tev_boot(&t, i);
    tev_run(&t, 10000);
    assert_false(t.timed_out);
    assert_int_equal(t.before_sends, 3);
    assert_int_equal(t.sends, 2);
    assert_int_equal(t.srv.requests, 2);
    assert_int_equal(t.responses, 2);
    assert_int_equal(t.ok200, 1);
    assert_int_equal(t.gone410, 1);
    assert_int_equal(t.ready, 1);
    assert_int_equal(t.retired, 1);
    assert_int_equal(t.failed, 0);
    assert_int_equal(t.persists, 1);
    assert_int_equal(t.persisted_retired, 1);
    assert_int_equal(t.io_errors, 0);
    assert_int_equal(sd_machine_phase(&t.m[0]), SD_PH_READY);
    assert_int_equal(sd_machine_phase(&t.m[1]), SD_PH_RETIRED);
    assert_int_equal(sd_machine_phase(&t.m[2]), SD_PH_REQUEST); /* taken over by the caller */
    sd_ev_get_stats(t.ev, &st);
    assert_int_equal(st.requests, 2);
    assert_int_equal(st.responses, 2);
    assert_int_equal(st.queued, 0);
    /* the caller may re-create the declined device and boot it again (now it is sent) */
    t.decline_dev = UINT32_MAX;
    t.target = 3;
    tev_init_dev(&t, 2);
    tev_boot(&t, 2);
    tev_run(&t, 10000);
    assert_false(t.timed_out);
    assert_int_equal(t.ready, 2);
    assert_int_equal(t.srv.requests, 3);
    tev_teardown(&t);
}

/* The server holds the request: after the SEND's timeout the device sees IO_ERROR and backs off. */
static void test_request_timeout(void **state)
{
    struct tev t;
    struct sd_ev_stats st;
    (void)state;
    tev_setup(&t, 1, 2);
    t.cfg.request_timeout_ms = 300;
    t.srv.hold = true;
    t.stop_on_io_error = true;
    int64_t t0 = sd_ev_now_ms();
    tev_boot(&t, 0);
    tev_run(&t, 10000);
    int64_t took = sd_ev_now_ms() - t0;
    assert_false(t.timed_out);
    assert_int_equal(t.srv.requests, 1);
    assert_int_equal(t.io_errors, 1);
    assert_string_equal(t.io_why, "timeout");
    assert_true(took >= 290 && took < 5000);
    assert_int_equal(t.responses, 0);
    assert_int_equal(t.done, 0);
    assert_int_equal(sd_machine_phase(&t.m[0]), SD_PH_BACKOFF);
    sd_ev_get_stats(t.ev, &st);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.io_errors, 1);
    assert_int_equal(st.retries, 0); /* a timeout is never resent transparently */
    assert_int_equal(st.conns, 0);   /* the connection of a timed-out request is closed */
    tev_teardown(&t);
}

struct tev_kick {
    struct tev *t;
    uint32_t boot_dev;
};

/* The server closes the idle keep-alive connection; in the same instant a device asks to send. */
static void tev_close_then_boot(evutil_socket_t fd, short what, void *arg)
{
    struct tev_kick *k = arg;
    (void)fd;
    (void)what;
    assert_non_null(k->t->srv.last);
    evhttp_connection_free(k->t->srv.last);
    k->t->srv.last = NULL;
    if (k->boot_dev != UINT32_MAX)
        tev_boot(k->t, k->boot_dev);
    else
        event_base_loopbreak(k->t->base);
}

static void tev_kick(struct tev *t, uint32_t boot_dev)
{
    struct tev_kick k = {t, boot_dev};
    struct event *e = evtimer_new(t->base, tev_close_then_boot, &k);
    struct timeval zero = {0, 0};
    assert_non_null(e);
    evtimer_add(e, &zero);
    tev_run(t, 10000);
    event_free(e);
}

/*
 * A server-side close of an idle keep-alive connection: noticed while idle it
 * is dropped quietly; noticed only after the next request went out on it, the
 * request is resent on a fresh connection. The device sees no error either way.
 */
static void test_server_closes_idle(void **state)
{
    struct tev t;
    struct sd_ev_stats st;
    (void)state;
    tev_setup(&t, 3, 1);
    /* device 0 leaves one idle keep-alive connection behind */
    t.target = 1;
    tev_boot(&t, 0);
    tev_run(&t, 10000);
    assert_int_equal(t.ready, 1);
    sd_ev_get_stats(t.ev, &st);
    assert_int_equal(st.conns, 1);

    /* the server closes it and the request of device 1 goes out before the EOF is seen */
    t.target = 2;
    tev_kick(&t, 1);
    assert_false(t.timed_out);
    assert_int_equal(t.ready, 2);
    assert_int_equal(t.io_errors, 0);
    sd_ev_get_stats(t.ev, &st);
    assert_int_equal(st.retries, 1);
    assert_int_equal(st.conns_opened, 2);
    assert_int_equal(st.requests, 3);   /* device 1's first attempt reached the wire */
    assert_int_equal(t.sends, 3);
    assert_int_equal(st.responses, 2);
    assert_int_equal(st.io_errors, 0);
    assert_int_equal(t.srv.requests, 2); /* the server never read the lost attempt */

    /* the server closes the new idle connection; nothing is sent: the EOF drops it quietly */
    tev_kick(&t, UINT32_MAX);
    tev_run(&t, 200); /* let the EOF arrive */
    assert_true(t.timed_out);
    sd_ev_get_stats(t.ev, &st);
    assert_int_equal(st.conns, 0);
    assert_int_equal(t.io_errors, 0);
    /* the next device opens a fresh connection without a resend */
    t.target = 3;
    tev_boot(&t, 2);
    tev_run(&t, 10000);
    assert_false(t.timed_out);
    assert_int_equal(t.ready, 3);
    sd_ev_get_stats(t.ev, &st);
    assert_int_equal(st.retries, 1);
    assert_int_equal(st.conns_opened, 3);
    assert_int_equal(st.io_errors, 0);
    assert_int_equal(t.io_errors, 0);
    tev_teardown(&t);
}

/*
 * 10,000 warm devices each sleep a random boot jitter in [0, 1.5 s); every
 * tenth gets a reprovision command while it sleeps (out of the heap and back
 * in with the same deadline, now for /reprovision). Every timer fires once,
 * in deadline order, never early, and every device ends READY.
 */
static void test_timer_heap_many(void **state)
{
    struct tev t;
    struct sd_ev_stats st;
    const uint32_t n = 10000;
    (void)state;
    tev_setup(&t, n, 16);
    t.cfg.boot_jitter_ms = 1500;
    t.deadline = calloc(n, sizeof *t.deadline);
    assert_non_null(t.deadline);
    for (uint32_t i = 0; i < n; i++) {
        tev_boot(&t, i);
        assert_int_equal(sd_machine_phase(&t.m[i]), SD_PH_STAGGER);
        t.deadline[i] = t.m[i].until_ms; /* no accessor for the deadline: the test reads the field */
    }
    for (uint32_t i = 0; i < n; i += 10)
        sd_ev_deliver(t.ev, i, SD_EV_REPROVISION, "test");
    for (uint32_t i = 0; i < n; i++)
        assert_int_equal(sd_machine_phase(&t.m[i]), SD_PH_STAGGER);
    assert_int_equal(t.before_sends, 0);
    tev_run(&t, 30000);
    assert_false(t.timed_out);
    assert_int_equal(t.fired, n);
    assert_int_equal(t.out_of_order, 0);
    assert_int_equal(t.early, 0);
    assert_int_equal(t.ready, n);
    assert_int_equal(t.srv.requests, n);
    assert_int_equal(t.srv.reprovisions, n / 10);
    sd_ev_get_stats(t.ev, &st);
    assert_int_equal(st.requests, n);
    assert_int_equal(st.io_errors, 0);
    assert_true(st.peak_conns <= 16);
    tev_teardown(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keepalive_pool_fifo),
        cmocka_unit_test(test_hooks_counts),
        cmocka_unit_test(test_request_timeout),
        cmocka_unit_test(test_server_closes_idle),
        cmocka_unit_test(test_timer_heap_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
