/*
 * static_server.c - the benchmark's ceiling: libevent's evhttp (the control
 * plane's HTTP stack) answering every request 200 with a small fixed JSON
 * body, no routing, no database, no Redis.
 *
 *   static-server --listen 127.0.0.1:PORT
 *
 * Runs until SIGTERM or SIGINT.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "util.h"

/* About the size of a locate answer's envelope, without its fields. */
static const char BODY[] = "{\"status\":\"ok\",\"registrationId\":\"dev-1\",\"stamp\":\"eu-west-1\"}";

static void on_request(struct evhttp_request *req, void *arg)
{
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    (void)arg;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evbuffer_add_reference(out, BODY, sizeof BODY - 1, NULL, NULL);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
    char host[256];
    int port = 0;
    struct event_base *base;
    struct evhttp *http;
    struct event *sig_int, *sig_term;

    if (argc != 3 || strcmp(argv[1], "--listen") != 0 || !util_parse_hostport(argv[2], host, sizeof host, &port)) {
        fprintf(stderr, "usage: static-server --listen HOST:PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    http = base ? evhttp_new(base) : NULL;
    if (!http) {
        fprintf(stderr, "static-server: cannot set up libevent\n");
        return 1;
    }
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT);
    evhttp_set_timeout(http, 60);
    evhttp_set_gencb(http, on_request, NULL);
    if (!evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port)) {
        fprintf(stderr, "static-server: cannot listen on %s:%d\n", host, port);
        return 1;
    }
    sig_int = evsignal_new(base, SIGINT, on_signal, base);
    sig_term = evsignal_new(base, SIGTERM, on_signal, base);
    evsignal_add(sig_int, NULL);
    evsignal_add(sig_term, NULL);
    fprintf(stderr, "static-server: listening on %s:%d\n", host, port);
    event_base_dispatch(base);
    event_free(sig_int);
    event_free(sig_term);
    evhttp_free(http);
    event_base_free(base);
    return 0;
}
