/*
 * tls.h - OpenSSL set-up shared by the daemons: server contexts (certificate
 * and key from files, TLS 1.2+), client contexts that verify the peer
 * against a CA file (or the system store) and its host name or IP, and the
 * libevent bufferevents that carry them.
 */
#ifndef STAMPCP_TLS_H
#define STAMPCP_TLS_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/ssl.h>
#include <stddef.h>

/* NULL on failure with a reason in err. */
SSL_CTX *tls_server_ctx_new(const char *cert_file, const char *key_file, char *err, size_t errlen);
/* ca_file NULL: the system's default trust store. */
SSL_CTX *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen);

/* A client bufferevent (not yet connected) that sends SNI and checks that the
 * peer's certificate names host (a DNS name or an IP address). */
struct bufferevent *tls_client_bev(struct event_base *base, SSL_CTX *ctx, const char *host);

/* For evhttp_set_bevcb(): arg is the server SSL_CTX. */
struct bufferevent *tls_server_bevcb(struct event_base *base, void *arg);

/* The last OpenSSL error as text (for logs). */
const char *tls_last_error(char *buf, size_t len);

#endif
