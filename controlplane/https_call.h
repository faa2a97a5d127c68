/*
 * https_call.h - one HTTPS request with a JSON answer, on the event loop: a
 * fresh verified TLS connection per call (libevent can't reconnect an SSL
 * bufferevent), a deadline, and a callback that runs exactly once from the
 * loop (never inside https_call()).
 */
#ifndef CP_HTTPS_CALL_H
#define CP_HTTPS_CALL_H

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/ssl.h>

struct https_result {
    int status;                  /* HTTP status; 0 when no answer came (connect, TLS, deadline) */
    json_t *body;                /* parsed JSON body or NULL; borrowed, valid during the callback */
    const char *continuation;    /* x-ms-continuation header, or NULL */
    int retry_after_s;           /* Retry-After in whole seconds, or -1 */
    const char *error;           /* why status is 0 */
};

typedef void (*https_cb)(const struct https_result *res, void *arg);

/* headers: NULL-terminated name, value pairs. body may be NULL. */
void https_call(struct event_base *base, SSL_CTX *ctx, const char *hostport, enum evhttp_cmd_type method,
                const char *path, const char *const *headers, const char *body, int timeout_ms,
                https_cb cb, void *arg);

/* Free every call still in flight without running its callback (shutdown). */
void https_call_abort_all(void);

#endif
