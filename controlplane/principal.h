/*
 * principal.h - who is calling the admin API: the operator token from the
 * config (break-glass, every scope), a platform API key (tenant NULL) or a
 * tenant API key, and what that caller may do (scopes).
 *
 * Ownership: a principal is a plain value, copied into each cp_req
 * (cp_req.who); it holds no pointers.
 */
#ifndef CP_PRINCIPAL_H
#define CP_PRINCIPAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

enum principal_kind {
    PRINCIPAL_NONE = 0,       /* not authenticated (device routes authenticate themselves) */
    PRINCIPAL_OPERATOR,       /* the config's operatorToken: a platform credential with every scope */
    PRINCIPAL_KEY,            /* an API key (cpk_<id>_<secret>) */
};

/* Scopes, as bits. platform:admin implies every other one. */
enum {
    SCOPE_PLATFORM_ADMIN    = 1u << 0,
    SCOPE_TENANTS_READ      = 1u << 1,
    SCOPE_TENANTS_WRITE     = 1u << 2,
    SCOPE_DEVICES_READ      = 1u << 3,
    SCOPE_DEVICES_WRITE     = 1u << 4,
    SCOPE_PROVISION_ON_BEHALF = 1u << 5,
    SCOPE_KEYS_WRITE        = 1u << 6,
    SCOPE_TRANSFERS_WRITE   = 1u << 7,
    SCOPE_COSTS_READ        = 1u << 8,
    SCOPE_OPS_FAILOVER      = 1u << 9,
    SCOPE_ALL               = (1u << 10) - 1,
};

#define PRINCIPAL_MAX_GEOS 16

struct principal {
    enum principal_kind kind;
    char key_id[40];          /* the API key's id; "" for the operator token */
    char name[129];           /* the key's name, or "operator token" */
    char tenant[64];          /* "" = platform credential; else the only tenant it may see */
    uint32_t scopes;          /* SCOPE_* bits */
    int64_t expires_ms;       /* an API key's expiry (wall clock, ms); 0: none. Via a
                               * previous secret: the end of the rotation overlap */
    bool via_previous;        /* authenticated with a secret kept only for a rotation overlap */
    /* tenant keys: the tenant's residency geographies, which bound the layout they may read */
    char residency[PRINCIPAL_MAX_GEOS][64];
    int nresidency;
};

static inline bool principal_is_platform(const struct principal *p)
{
    return p->kind != PRINCIPAL_NONE && p->tenant[0] == '\0';
}

/* Whether the caller holds scope s (platform:admin holds them all). */
static inline bool principal_has(const struct principal *p, uint32_t s)
{
    return p->kind != PRINCIPAL_NONE && ((p->scopes & SCOPE_PLATFORM_ADMIN) || (p->scopes & s) == s);
}

/* Whether the caller may see anything of tenant t at all: platform
 * credentials see every tenant, a tenant key only its own. When this is
 * false the answer must be 404 not_found, never 403 (existence must not leak). */
static inline bool principal_sees_tenant(const struct principal *p, const char *t)
{
    return p->kind != PRINCIPAL_NONE && (p->tenant[0] == '\0' || strcmp(p->tenant, t) == 0);
}

/* Audit's "who": the key id ("" for the operator token) and name. */
static inline const char *principal_label(const struct principal *p)
{
    return p->kind == PRINCIPAL_OPERATOR ? "operator token" : p->name;
}

/* Scope words ("tenants:read") and bits; 0 / NULL when unknown. */
uint32_t principal_scope_from_word(const char *word);
const char *principal_scope_word(uint32_t bit);
/* The scopes as words joined by " and " ("keys:write and provision:on-behalf"). */
void principal_scope_words(uint32_t scopes, char *out, size_t outlen);
/* The scopes as a JSON-ready list of words (a new jansson array). */
struct json_t;
struct json_t *principal_scopes_json(uint32_t scopes);

#endif
