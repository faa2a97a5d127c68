/*
 * api_tenants.h - tenant onboarding (admin, operator token): create, get,
 * list, update, rotate the enrollment key, remove. Installer tokens have
 * their own module (api_installer_tokens.h).
 */
#ifndef CP_API_TENANTS_H
#define CP_API_TENANTS_H

#include "http_req.h"

/* /v1/tenants[/<id>[/enrollment-key/rotate]]: segs are the path after "tenants". Replies once. */
void api_tenants_handle(struct cp_req *r, char **segs, int nsegs);

/* The body checks of the tenant routes, without a database (the handlers
 * call them; so do the fuzz harnesses). body is borrowed; false with e set
 * means a 400 with e's code and field. */
enum api_tenants_body {
    API_TENANTS_CREATE,          /* POST /tenants */
    API_TENANTS_PATCH,           /* PATCH /tenants/{id} */
    API_TENANTS_INSTALLER_TOKEN, /* POST /tenants/{id}/installer-tokens (installer_tokens_validate, now) */
    API_TENANTS_ROTATE,          /* POST /tenants/{id}/enrollment-key/rotate (optional body) */
    API_TENANTS_SUSPEND,         /* POST /tenants/{id}/suspend and .../resume (optional body: {}) */
};
bool api_tenants_validate(enum api_tenants_body kind, json_t *body, struct jv_err *e) MUSTCHECK;

#endif
