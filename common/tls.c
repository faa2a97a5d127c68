/*
 * tls.c - TLS contexts and bufferevents: server identities (reloadable on
 * SIGHUP), client contexts and per-connection client SSLs.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

const char *tls_last_error(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    if (!e)
        snprintf(buf, len, "unknown TLS error");
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

SSL_CTX *tls_server_ctx_new(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    char e[256];
    if (!ctx) {
        snprintf(err, errlen, "SSL_CTX_new: %s", tls_last_error(e, sizeof e));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        snprintf(err, errlen, "certificate %s: %s", cert_file, tls_last_error(e, sizeof e));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "private key %s: %s", key_file, tls_last_error(e, sizeof e));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

SSL_CTX *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    char e[256];
    int ok;
    if (!ctx) {
        snprintf(err, errlen, "SSL_CTX_new: %s", tls_last_error(e, sizeof e));
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        snprintf(err, errlen, "CA %s: %s", ca_file ? ca_file : "(system)", tls_last_error(e, sizeof e));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

SSL *tls_client_ssl_new(SSL_CTX *ctx, const char *host)
{
    SSL *ssl = SSL_new(ctx);
    unsigned char ip[16];
    int ok;
    if (!ssl)
        return NULL;
    if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1)
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    else
        ok = SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1;
    if (!ok) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

struct bufferevent *tls_client_bev(struct event_base *base, SSL_CTX *ctx, const char *host)
{
    SSL *ssl = tls_client_ssl_new(ctx, host);
    struct bufferevent *bev;
    if (!ssl)
        return NULL;
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                         BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!bev) {
        SSL_free(ssl);
        return NULL;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

struct bufferevent *tls_server_bevcb(struct event_base *base, void *arg)
{
    SSL *ssl = SSL_new(arg);
    struct bufferevent *bev = ssl ? bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                                   BEV_OPT_CLOSE_ON_FREE)
                                  : NULL;
    if (!bev) {
        /* evhttp would fall back to a plain connection on NULL: never serve
         * a TLS port in clear. Only allocation fails here (abort-on-OOM policy). */
        log_error("event=tls_connection_setup_failed");
        abort();
    }
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

/* ---------------------------------------------------------------- reloadable server identity */

struct tls_server {
    SSL_CTX *ctx;
    char *cert_file, *key_file, *client_ca_file, *sid_ctx;
    void (*configure)(SSL_CTX *ctx, void *arg);
    void *configure_arg;
    unsigned generation;
};

static SSL_CTX *tls_server_build(const struct tls_server *s, char *err, size_t errlen)
{
    SSL_CTX *ctx = tls_server_ctx_new(s->cert_file, s->key_file, err, errlen);
    char e[256];
    if (!ctx)
        return NULL;
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)s->sid_ctx, (unsigned)strlen(s->sid_ctx));
    if (s->client_ca_file) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(s->client_ca_file);
        if (!names || SSL_CTX_load_verify_locations(ctx, s->client_ca_file, NULL) != 1) {
            snprintf(err, errlen, "client CA %s: %s", s->client_ca_file, tls_last_error(e, sizeof e));
            if (names)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_client_CA_list(ctx, names);   /* takes names */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    if (s->configure)
        s->configure(ctx, s->configure_arg);
    return ctx;
}

struct tls_server *tls_server_new(const struct tls_server_opts *o, char *err, size_t errlen)
{
    struct tls_server *s = xcalloc(1, sizeof *s);
    s->cert_file = xstrdup(o->cert_file);
    s->key_file = xstrdup(o->key_file);
    s->client_ca_file = o->client_ca_file ? xstrdup(o->client_ca_file) : NULL;
    s->sid_ctx = xstrdup(o->session_id_context ? o->session_id_context : "stampcp");
    s->configure = o->configure;
    s->configure_arg = o->configure_arg;
    if (!(s->ctx = tls_server_build(s, err, errlen))) {
        tls_server_free(s);
        return NULL;
    }
    return s;
}

bool tls_server_reload(struct tls_server *s, char *err, size_t errlen)
{
    SSL_CTX *ctx = tls_server_build(s, err, errlen);
    if (!ctx)
        return false;
    SSL_CTX_free(s->ctx);   /* connections accepted with it hold their own reference */
    s->ctx = ctx;
    s->generation++;
    return true;
}

SSL_CTX *tls_server_ctx(const struct tls_server *s)
{
    return s->ctx;
}

unsigned tls_server_generation(const struct tls_server *s)
{
    return s->generation;
}

void tls_server_free(struct tls_server *s)
{
    if (!s)
        return;
    if (s->ctx)
        SSL_CTX_free(s->ctx);
    free(s->cert_file);
    free(s->key_file);
    free(s->client_ca_file);
    free(s->sid_ctx);
    free(s);
}

struct bufferevent *tls_server_reloadable_bevcb(struct event_base *base, void *arg)
{
    struct tls_server *s = arg;
    return tls_server_bevcb(base, s->ctx);
}

X509 *tls_bev_peer_cert(struct bufferevent *bev)
{
    SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
    return ssl ? SSL_get0_peer_certificate(ssl) : NULL;
}

STACK_OF(X509) *tls_bev_peer_chain(struct bufferevent *bev)
{
    SSL *ssl = bev ? bufferevent_openssl_get_ssl(bev) : NULL;
    return ssl ? SSL_get_peer_cert_chain(ssl) : NULL;
}
