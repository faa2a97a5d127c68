/*
 * api_inventory.h - what is where, across every geography database (the
 * inventory DPS itself lacks), for operators (operator token):
 *
 *   GET /v1/tenants/{t}/devices?stamp=&status=&limit=&cursor=
 *   GET /v1/inventory[?tenant=]
 */
#ifndef CP_API_INVENTORY_H
#define CP_API_INVENTORY_H

#include "http_req.h"

void api_inventory_devices(struct cp_req *r, const char *tenant);
void api_inventory_counts(struct cp_req *r);

#endif
