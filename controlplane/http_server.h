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
/* The client certificate the TLS handshake verified against tls.clientCa (mTLS),
 * or NULL (plain HTTP, no client CA, no certificate). Owned by the connection,
 * valid while the request is. */
X509 *http_server_peer_cert(struct evhttp_request *req);

#endif
