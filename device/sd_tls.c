/*
 * sd_tls.c - libstampdevice: client TLS contexts and per-connection SSL
 * objects with peer verification (sd_tls.h). Owns trust, client
 * certificates, SNI and the host/IP check; the drivers own the sockets.
 */
#include "sd_tls.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

/* The OpenSSL error queue as one line ("" when empty); the queue is cleared. */
static void sd_tls_queue(char *buf, size_t len)
{
    unsigned long e;
    size_t used = 0;

    buf[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        int n;
        ERR_error_string_n(e, one, sizeof one);
        n = snprintf(buf + used, len - used, "%s%s", used ? "; " : "", one);
        if (n < 0 || (size_t)n >= len - used)
            break; /* keep what fits; drain the rest below */
        used += (size_t)n;
    }
    ERR_clear_error();
}

static void sd_tls_fail(char *err, size_t errlen, const char *what, const char *file)
{
    char q[512];
    sd_tls_queue(q, sizeof q);
    if (err && errlen)
        snprintf(err, errlen, "%s%s%s: %s", what, file ? " " : "", file ? file : "", q[0] ? q : "failed");
}

/* Trust: the CA file when given (only it), else the system's store. */
static bool sd_tls_load_trust(SSL_CTX *ctx, const char *ca_file, char *err, size_t errlen)
{
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            sd_tls_fail(err, errlen, "load CA file", ca_file);
            return false;
        }
        return true;
    }
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        sd_tls_fail(err, errlen, "load the system trust store", NULL);
        return false;
    }
    return true;
}

/*
 * The pass phrase callback for the client key: none is ever given. OpenSSL's
 * default one prompts on the controlling terminal and blocks until someone
 * types, which on a device (or under a test run from a shell) never ends.
 * Refusing makes an encrypted key a setup failure that says so.
 */
static int sd_tls_no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    if (userdata)
        *(bool *)userdata = true;
    return -1;
}

static bool sd_tls_load_client_cert(SSL_CTX *ctx, const struct sd_tls_opts *o, char *err, size_t errlen)
{
    bool asked = false;

    if (!o->cert_file && !o->key_file)
        return true;
    if (!o->cert_file || !o->key_file) {
        snprintf(err, errlen, "a client certificate needs both a certificate and a key file");
        return false;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
        sd_tls_fail(err, errlen, "load client certificate", o->cert_file);
        return false;
    }
    SSL_CTX_set_default_passwd_cb(ctx, sd_tls_no_passphrase);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, &asked);
    if (SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) != 1) {
        SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
        if (asked) {
            ERR_clear_error();
            snprintf(err, errlen, "load client key %s: it is encrypted with a pass phrase (not supported)",
                     o->key_file);
        } else {
            sd_tls_fail(err, errlen, "load client key", o->key_file);
        }
        return false;
    }
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL); /* &asked is about to go out of scope */
    if (SSL_CTX_check_private_key(ctx) != 1) {
        sd_tls_fail(err, errlen, "client key does not match certificate", o->key_file);
        return false;
    }
    return true;
}

SSL_CTX *sd_tls_ctx_new(const struct sd_tls_opts *o, char *err, size_t errlen)
{
    static const struct sd_tls_opts none = { NULL, NULL, NULL };
    SSL_CTX *ctx;
    char dummy[1];

    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (!o)
        o = &none;
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        sd_tls_fail(err, errlen, "SSL_CTX_new", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* a device reconnects now and then, not per request: no session cache to keep */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (!sd_tls_load_trust(ctx, o->ca_file, err, errlen) || !sd_tls_load_client_cert(ctx, o, err, errlen)) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static bool sd_tls_is_ip(const char *host)
{
    unsigned char addr[16];
    return inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
}

/* What the peer's certificate must name: the IP address, or the DNS name (also sent as SNI). */
static bool sd_tls_set_peer(SSL *ssl, const char *host)
{
    if (sd_tls_is_ip(host))
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
    /* no partial wildcards ("f*.example.com"): as browsers do */
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    return SSL_set_tlsext_host_name(ssl, host) == 1 && SSL_set1_host(ssl, host) == 1;
}

SSL *sd_tls_new(SSL_CTX *ctx, const char *host, int fd, char *err, size_t errlen)
{
    SSL *ssl;
    char dummy[1];

    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (!host || !*host) {
        snprintf(err, errlen, "TLS: no host name to verify");
        return NULL;
    }
    ssl = SSL_new(ctx);
    if (!ssl) {
        sd_tls_fail(err, errlen, "SSL_new", NULL);
        return NULL;
    }
    if (!sd_tls_set_peer(ssl, host)) {
        sd_tls_fail(err, errlen, "TLS peer name", host);
        SSL_free(ssl);
        return NULL;
    }
    if (SSL_set_fd(ssl, fd) != 1) {
        sd_tls_fail(err, errlen, "SSL_set_fd", NULL);
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_connect_state(ssl);
    return ssl;
}

const char *sd_tls_describe(SSL *ssl, char *buf, size_t len)
{
    char q[512];
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;

    if (!buf || len == 0)
        return "";
    sd_tls_queue(q, sizeof q);
    if (v != X509_V_OK)
        snprintf(buf, len, "certificate verification failed: %s%s%s", X509_verify_cert_error_string(v),
                 q[0] ? "; " : "", q);
    else
        snprintf(buf, len, "%s", q[0] ? q : "TLS error");
    return buf;
}
