/*
 * api_probes.h - /healthz (the process runs) and /readyz (its databases and
 * Redis answer), for load balancers and the operator's runbook.
 */
#ifndef CP_API_PROBES_H
#define CP_API_PROBES_H

#include "http_req.h"

void api_probes_healthz(struct cp_req *r);
void api_probes_readyz(struct cp_req *r);

#endif
