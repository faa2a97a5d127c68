/*
 * http_server.h - the control plane's HTTP listener and route table.
 */
#ifndef CP_HTTP_SERVER_H
#define CP_HTTP_SERVER_H

#include <stdbool.h>

#include "cp.h"

/* Bind cfg.listen and start serving; false (logged) if the address can't be bound. */
bool http_server_start(struct cp *cp) MUSTCHECK;
/* Stop accepting new connections; requests in flight still get answers. */
void http_server_stop_accepting(struct cp *cp);
void http_server_free(struct cp *cp);

#endif
