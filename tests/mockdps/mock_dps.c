/*
 * mock_dps.c - a small HTTPS peer speaking the Azure DPS device API (PUT
 * register, GET operations), for testing the router's proxy mode before the
 * stamp provisioning endpoint exists. It verifies every SAS token the way
 * DPS does for a symmetric-key group enrollment, and logs one line per
 * request ("METHOD path -> status") for the test to assert on.
 *
 * mock-dps --listen HOST:PORT --cert F --key F --scope S --group-key B64 --hub HOST
 *          [--mode ok|immediate|throttle|failed|disabled|unauthorized] [--polls N] [--log FILE]
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sas.h"
#include "strmap.h"
#include "tls.h"
#include "util.h"

struct mock {
    const char *scope, *hub, *mode;
    unsigned char group_key[64];
    int keylen;
    int polls;
    FILE *log;
    struct strmap *poll_counts;   /* operation id -> count (intptr) */
    struct strmap *payloads;      /* regid -> json text of its payload */
};

static void mock_log(struct mock *m, struct evhttp_request *req, int status)
{
    if (m->log) {
        fprintf(m->log, "%s %s -> %d\n", evhttp_request_get_command(req) == EVHTTP_REQ_PUT ? "PUT" : "GET",
                evhttp_request_get_uri(req), status);
        fflush(m->log);
    }
}

static void mock_reply(struct mock *m, struct evhttp_request *req, int status, json_t *body, int retry_after)
{
    struct evbuffer *buf = evbuffer_new();
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "application/json; charset=utf-8");
    if (retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", retry_after);
        evhttp_add_header(h, "Retry-After", ra);
    }
    if (text) evbuffer_add(buf, text, strlen(text));
    mock_log(m, req, status);
    evhttp_send_reply(req, status, NULL, buf);
    evbuffer_free(buf);
    free(text);
    json_decref(body);
}

static json_t *mock_state(struct mock *m, const char *regid)
{
    const char *payload = strmap_get(m->payloads, regid);
    json_t *rs = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "registrationId", regid, "createdDateTimeUtc",
                           "2026-11-27T00:00:00.000Z", "assignedHub", m->hub, "deviceId", regid, "status", "assigned",
                           "substatus", "initialAssignment", "lastUpdatedDateTimeUtc", "2026-11-27T00:00:00.000Z",
                           "etag", "\"1\"");
    if (payload)
        json_object_set_new(rs, "payload", json_pack("{s:o}", "echo", json_loads(payload, 0, NULL)));
    return rs;
}

/* libevent 2.1 never reads a body on GET; an SDK sends "{}" there. Drop it
 * from the connection so that the next request on it parses. */
static void mock_drain_get_body(struct evhttp_request *req)
{
    const char *cl = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Length");
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = conn ? evhttp_connection_get_bufferevent(conn) : NULL;
    long n = cl ? atol(cl) : 0;
    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && n > 0 && bev) {
        struct evbuffer *in = bufferevent_get_input(bev);
        size_t have = evbuffer_get_length(in);
        evbuffer_drain(in, have < (size_t)n ? have : (size_t)n);
    }
}

static void mock_handle(struct evhttp_request *req, void *arg)
{
    struct mock *m = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    char scope[80], regid[140], verb[20], opid[200];
    struct sas_token t;
    unsigned char dk[SAS_KEY_LEN];

    mock_drain_get_body(req);
    opid[0] = '\0';
    if (!path || sscanf(path, "/%79[^/]/registrations/%139[^/]/%19[^/]/%199s", scope, regid, verb, opid) < 3) {
        mock_reply(m, req, 404, json_pack("{s:s}", "message", "no route"), 0);
        return;
    }
    if (strcmp(scope, m->scope) != 0 || strcmp(m->mode, "unauthorized") == 0 || sas_parse(auth, &t) != SAS_OK ||
        sas_check_claims(&t, scope, regid, util_wall_ms() / 1000) != SAS_OK) {
        mock_reply(m, req, 401, json_pack("{s:i, s:s}", "errorCode", 401002, "message", "Unauthorized"), 0);
        return;
    }
    sas_derive_key(m->group_key, (size_t)m->keylen, regid, dk);
    if (!sas_verify(&t, dk, sizeof dk)) {
        mock_reply(m, req, 401, json_pack("{s:i, s:s}", "errorCode", 401002, "message", "bad signature"), 0);
        return;
    }
    if (evhttp_request_get_command(req) == EVHTTP_REQ_PUT && strcmp(verb, "register") == 0) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        json_t *body = json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)len), len, 0, NULL);
        const char *rid = json_string_value(json_object_get(body, "registrationId"));
        if (!rid || strcmp(rid, regid) != 0) {
            json_decref(body);
            mock_reply(m, req, 400, json_pack("{s:s}", "message", "registrationId mismatch"), 0);
            return;
        }
        if (json_object_get(body, "payload")) {
            char *p = json_dumps(json_object_get(body, "payload"), JSON_COMPACT | JSON_ENCODE_ANY);
            free(strmap_put(m->payloads, regid, p));
        }
        json_decref(body);
        if (strcmp(m->mode, "throttle") == 0) {
            mock_reply(m, req, 429, json_pack("{s:s}", "message", "throttled"), 3);
        } else if (strcmp(m->mode, "immediate") == 0) {
            mock_reply(m, req, 200, json_pack("{s:s, s:s, s:o}", "operationId", "op-now", "status", "assigned",
                                              "registrationState", mock_state(m, regid)), 0);
        } else if (strcmp(m->mode, "failed") == 0) {
            mock_reply(m, req, 200, json_pack("{s:s, s:s, s:{s:s, s:s, s:i, s:s}}", "operationId", "op-f", "status",
                                              "failed", "registrationState", "registrationId", regid, "status",
                                              "failed", "errorCode", 400209, "errorMessage", "custom allocation failed"), 0);
        } else if (strcmp(m->mode, "disabled") == 0) {
            mock_reply(m, req, 200, json_pack("{s:s, s:s}", "operationId", "op-d", "status", "disabled"), 0);
        } else {
            char op[200];
            snprintf(op, sizeof op, "op.%s", regid);
            strmap_put(m->poll_counts, op, (void *)(intptr_t)0);
            mock_reply(m, req, 202, json_pack("{s:s, s:s}", "operationId", op, "status", "assigning"), 1);
        }
        return;
    }
    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && strcmp(verb, "operations") == 0) {
        char *q = strchr(opid, '?');
        intptr_t count;
        if (q) *q = '\0';
        if (!strmap_get(m->poll_counts, opid) && strncmp(opid, "op.", 3) != 0) {
            mock_reply(m, req, 404, json_pack("{s:s}", "message", "unknown operation"), 0);
            return;
        }
        count = (intptr_t)strmap_get(m->poll_counts, opid) + 1;
        strmap_put(m->poll_counts, opid, (void *)count);
        if (count < m->polls)
            mock_reply(m, req, 202, json_pack("{s:s, s:s}", "operationId", opid, "status", "assigning"), 1);
        else
            mock_reply(m, req, 200, json_pack("{s:s, s:s, s:o}", "operationId", opid, "status", "assigned",
                                              "registrationState", mock_state(m, regid)), 0);
        return;
    }
    mock_reply(m, req, 404, json_pack("{s:s}", "message", "no route"), 0);
}

static void mock_stop(evutil_socket_t sig, short what, void *arg)
{
    (void)sig; (void)what;
    event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'}, {"cert", required_argument, NULL, 'c'},
        {"key", required_argument, NULL, 'k'},    {"scope", required_argument, NULL, 's'},
        {"group-key", required_argument, NULL, 'g'}, {"hub", required_argument, NULL, 'h'},
        {"mode", required_argument, NULL, 'm'},   {"polls", required_argument, NULL, 'p'},
        {"log", required_argument, NULL, 'L'},    {NULL, 0, NULL, 0},
    };
    struct mock m = {.hub = "hub.mock.local", .mode = "ok", .polls = 2};
    const char *listen = NULL, *cert = NULL, *key = NULL, *gk = NULL;
    char host[256], err[300];
    int port, ch;
    struct event_base *base;
    struct evhttp *http;
    struct event *sig;
    SSL_CTX *ctx;

    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'l': listen = optarg; break;
        case 'c': cert = optarg; break;
        case 'k': key = optarg; break;
        case 's': m.scope = optarg; break;
        case 'g': gk = optarg; break;
        case 'h': m.hub = optarg; break;
        case 'm': m.mode = optarg; break;
        case 'p': m.polls = atoi(optarg); break;
        case 'L': m.log = fopen(optarg, "a"); break;
        default: return 2;
        }
    }
    if (!listen || !cert || !key || !m.scope || !gk || !util_parse_hostport(listen, host, sizeof host, &port) ||
        (m.keylen = sas_b64_decode(gk, m.group_key, sizeof m.group_key)) <= 0) {
        fprintf(stderr, "usage: mock-dps --listen HOST:PORT --cert F --key F --scope S --group-key B64 [--hub H] "
                        "[--mode M] [--polls N] [--log F]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!(ctx = tls_server_ctx_new(cert, key, err, sizeof err))) {
        fprintf(stderr, "mock-dps: %s\n", err);
        return 2;
    }
    m.poll_counts = strmap_new();
    m.payloads = strmap_new();
    base = event_base_new();
    http = evhttp_new(base);
    evhttp_set_bevcb(http, tls_server_bevcb, ctx);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_PUT | EVHTTP_REQ_POST);
    evhttp_set_gencb(http, mock_handle, &m);
    if (evhttp_bind_socket(http, host, (ev_uint16_t)port) != 0) {
        fprintf(stderr, "mock-dps: cannot listen on %s\n", listen);
        return 1;
    }
    sig = evsignal_new(base, SIGTERM, mock_stop, base);
    event_add(sig, NULL);
    fprintf(stderr, "mock-dps: listening on %s scope %s mode %s\n", listen, m.scope, m.mode);
    event_base_dispatch(base);
    evhttp_free(http);
    event_free(sig);
    event_base_free(base);
    SSL_CTX_free(ctx);
    strmap_free(m.poll_counts, NULL);
    strmap_free(m.payloads, free);
    if (m.log) fclose(m.log);
    return 0;
}
