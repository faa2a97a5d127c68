/*
 * sd_tls.h - libstampdevice: the TLS client setup the drivers share.
 *
 * A client SSL_CTX that verifies the peer (a CA file, or the system's
 * default trust store), TLS 1.2 or later, optionally presenting a client
 * certificate (X.509 attestation at the DPS); and per connection an SSL
 * object with SNI and the peer name checked: a host name against the
 * certificate's DNS names, an IP literal ("127.0.0.1", "::1") against its IP
 * addresses (and no SNI, which may not carry an address).
 *
 * No I/O here: the driver does the handshake on its own socket (blocking
 * or not). Independent of the daemons' common/ so the library stands alone.
 */
#ifndef STAMPDEVICE_SD_TLS_H
#define STAMPDEVICE_SD_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

struct sd_tls_opts {
    const char *ca_file;   /* PEM bundle to trust; NULL: the system's default paths */
    const char *cert_file; /* client certificate chain (PEM), or NULL */
    const char *key_file;  /* its private key (PEM, unencrypted: a pass phrase is never
                              asked for); required with cert_file */
};

/*
 * A new client context, or NULL with a message in err (a file that does not
 * load, a key that does not match the certificate). Free with SSL_CTX_free.
 */
SSL_CTX *sd_tls_ctx_new(const struct sd_tls_opts *o, char *err, size_t errlen);

/*
 * An SSL for one connection to host (a name or an IP literal, without port
 * or brackets) on the connected socket fd, in client mode, or NULL with a
 * message in err. The caller runs SSL_connect and frees it with SSL_free.
 */
SSL *sd_tls_new(SSL_CTX *ctx, const char *host, int fd, char *err, size_t errlen);

/*
 * Describe why the last TLS call failed: the OpenSSL error queue (which is
 * cleared), and the certificate verification result when it failed. Writes
 * into buf and returns it.
 */
const char *sd_tls_describe(SSL *ssl, char *buf, size_t len);

#endif
