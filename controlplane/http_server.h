/*
 * http_server.h - the control plane's HTTP listener and route table.
 */
#ifndef CP_HTTP_SERVER_H
#define CP_HTTP_SERVER_H

#include <event2/http.h>
#include <openssl/x509.h>
#include <stdbool.h>

#include "cp.h"

/* Bind cfg.listen and start serving; false (logged) if the address can't be bound. */
bool http_server_start(struct cp *cp) MUSTCHECK;
/* Stop accepting new connections; requests in flight still get answers. */
void http_server_stop_accepting(struct cp *cp);
void http_server_free(struct cp *cp);
/* SIGHUP: re-read tls.cert/tls.key/tls.clientCa; new handshakes use them, open
 * connections keep theirs. False (logged; the old certificate stays) on failure. */
bool http_server_reload_tls(struct cp *cp);
/* Whether tls.cert/tls.key/tls.clientCa load (always true with plainHttp); err says why not. */
bool http_server_check_tls(const struct cp_config *cfg, char *err, size_t errlen);
/* The client certificate of the connection, or NULL (plain HTTP, none sent).
 * With tls.clientCa the handshake verified it against those CAs; without,
 * it was only requested and is NOT verified (any certificate passes: the
 * device routes verify it against the tenant's CAs). Owned by the
 * connection, valid while the request is. */
X509 *http_server_peer_cert(struct evhttp_request *req);
/* The intermediates the client sent after its certificate (not verified;
 * without tls.clientCa any certificate passes the handshake), or NULL.
 * Owned by the connection. */
STACK_OF(X509) *http_server_peer_chain(struct evhttp_request *req);

#endif
