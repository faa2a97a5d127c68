/*
 * tls.c - TLS contexts and bufferevents.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

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

struct bufferevent *tls_client_bev(struct event_base *base, SSL_CTX *ctx, const char *host)
{
    SSL *ssl = SSL_new(ctx);
    struct bufferevent *bev;
    unsigned char ip[16];
    if (!ssl)
        return NULL;
    if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
    } else {
        SSL_set_tlsext_host_name(ssl, host);
        SSL_set1_host(ssl, host);
    }
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
    struct bufferevent *bev;
    if (!ssl)
        return NULL;
    bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (!bev)
        SSL_free(ssl);
    else
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}
