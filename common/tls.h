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
#include <stdbool.h>
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

/* A client SSL (not yet attached to a socket) that sends SNI for a host name
 * and checks that the peer's certificate names host (DNS name or IP). NULL on
 * failure; the caller frees it (SSL_free) or hands it to a bufferevent. */
SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *host);

/*
 * A reloadable server identity: the certificate files it was made from and
 * the SSL_CTX built from them now. tls_server_reload() builds a new context
 * from the same files and swaps it in only when that worked; connections
 * already open keep the context they were accepted with (each SSL holds a
 * reference to its SSL_CTX), new handshakes use the new one.
 *
 * Ownership: the tls_server owns its current SSL_CTX and copies of the file
 * names; tls_server_free releases them (open connections keep their own
 * reference to the context they use).
 */
struct tls_server_opts {
    const char *cert_file;        /* PEM chain, leaf first */
    const char *key_file;         /* PEM private key */
    const char *client_ca_file;   /* PEM CAs: clients must present a certificate that
                                     verifies against them (mTLS); NULL: none asked for */
    /* Called on every context built (start and reload) after the files are
     * loaded, for settings of the caller's own (a verify callback...); may be NULL. */
    void (*configure)(SSL_CTX *ctx, void *arg);
    void *configure_arg;
    const char *session_id_context; /* NULL: "stampcp" */
};
struct tls_server;

/* NULL with a reason in err when a file does not load. */
struct tls_server *tls_server_new(const struct tls_server_opts *o, char *err, size_t errlen);
/* Re-read the files; false (and the old context stays in use) with a reason in err. */
bool tls_server_reload(struct tls_server *s, char *err, size_t errlen);
SSL_CTX *tls_server_ctx(const struct tls_server *s);
/* Times the context was replaced (0 after tls_server_new). */
unsigned tls_server_generation(const struct tls_server *s);
void tls_server_free(struct tls_server *s);
/* For evhttp_set_bevcb(): arg is a struct tls_server (its current context). */
struct bufferevent *tls_server_reloadable_bevcb(struct event_base *base, void *arg);

/* The peer certificate a TLS bufferevent's handshake verified, or NULL (plain
 * connection, no certificate). Owned by the connection. */
X509 *tls_bev_peer_cert(struct bufferevent *bev);
/* The certificates the peer sent after its own (a server sees no leaf in
 * it), or NULL. Owned by the connection. */
STACK_OF(X509) *tls_bev_peer_chain(struct bufferevent *bev);

/* The last OpenSSL error as text (for logs). */
const char *tls_last_error(char *buf, size_t len);

#endif
