/*
 * installer_tokens.h - installer tokens (approach 4, low-touch provisioning):
 * the token format, the rules for a new token's fields, and the placement
 * count each token keeps in the global catalog.
 *
 * A token is "cpi_<id>_<secret>": <id> is 16 hex characters and public (it
 * names the token in lists, in the decision record and in the device
 * history); <secret> is 64 hex characters (256 random bits). Only the SHA-256
 * (hex) of the whole token is stored, and the token itself leaves the control
 * plane once, in the answer to its creation.
 *
 * Placements: a token's first placement of a device (a device without an
 * assignment) is counted before it is made, atomically in PostgreSQL, so no
 * number of control planes can let a token exceed maxPlacements. A placement
 * that then certainly did not happen gives its count back (release); one
 * whose outcome is unknown (the geography database stopped answering after
 * the statement was sent) keeps it, so a token may end up making fewer
 * placements than its maximum, never more.
 *
 * Ownership: nothing here keeps pointers past a call; callbacks get plain
 * values.
 */
#ifndef CP_INSTALLER_TOKENS_H
#define CP_INSTALLER_TOKENS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "jsonv.h"
#include "pgpool.h"
#include "util.h"

#define INSTALLER_ID_LEN 16                       /* hex characters of the public id */
#define INSTALLER_TOKEN_MAX 96                    /* "cpi_" + 16 + "_" + 64 + NUL fits */
#define INSTALLER_SHA_HEX 65                      /* SHA-256 hex + NUL */
#define INSTALLER_PREFIX_MAX 127                  /* registrationIdPrefix, characters */
#define INSTALLER_MAX_PLACEMENTS 1000000000LL
#define INSTALLER_DEFAULT_TTL_MS (24LL * 3600 * 1000)
#define INSTALLER_MAX_TTL_MS (30LL * 24 * 3600 * 1000)
#define INSTALLER_SKEW_MS (60LL * 1000)           /* grace past the 30 days for the caller's clock */

/* A new token's fields, after installer_tokens_validate. Strings are
 * borrowed from the body. */
struct installer_new {
    const char *name;
    int64_t expires_wall_ms;       /* now + 24 h unless given */
    const char *prefix;            /* NULL: any registration id */
    int64_t max_placements;        /* 0: no limit */
};

/* The body of POST /v1/tenants/{t}/installer-tokens: {"name", "expiresAt"?,
 * "registrationIdPrefix"?, "maxPlacements"?} (null = absent for the
 * optional ones). now_wall_ms: the time the expiry is judged against.
 * false with e set: a 400 with e's code and field. */
bool installer_tokens_validate(json_t *body, int64_t now_wall_ms, struct installer_new *out,
                               struct jv_err *e) MUSTCHECK;

/* An RFC 3339 time with an explicit offset ("2026-12-04T10:00:00Z",
 * "...T11:00:00.5+01:00") into Unix milliseconds. Calendar-checked; no leap
 * seconds. */
bool installer_tokens_parse_time(const char *s, int64_t *wall_ms) MUSTCHECK;

/* Whether s may be a registrationIdPrefix: 1-127 of the registration-id
 * alphabet [a-z0-9-._:]. */
bool installer_tokens_valid_prefix(const char *s);

/* Whether s is a public token id (16 lowercase hex). */
bool installer_tokens_valid_id(const char *s);

/* A fresh token: id (17 bytes), token (INSTALLER_TOKEN_MAX) and the SHA-256
 * hex of the token (INSTALLER_SHA_HEX). Aborts if the OS has no randomness. */
void installer_tokens_mint(char *id, char *token, char *sha256hex);

/* SHA-256 hex of a presented token (INSTALLER_SHA_HEX bytes). */
void installer_tokens_hash(const char *token, char *sha256hex);

/* The answer to a reservation. */
enum installer_reserve {
    INSTALLER_RESERVED,        /* counted: the placement may go ahead */
    INSTALLER_QUOTA_EXCEEDED,  /* maxPlacements reached: nothing counted */
    INSTALLER_NOT_VALID,       /* revoked, expired or gone meanwhile: nothing counted */
    INSTALLER_UNAVAILABLE,     /* the global catalog did not answer: nothing known to be counted */
};
typedef void (*installer_reserve_cb)(enum installer_reserve st, void *arg);

/* Count one placement of token id (of tenant) if it is live and under its
 * maximum. cb runs exactly once, later (or at once, with UNAVAILABLE, if the
 * pool is being freed). */
void installer_tokens_reserve(struct pgpool *global, const char *tenant, const char *id,
                              installer_reserve_cb cb, void *arg);

/* Give back a count taken by installer_tokens_reserve for a placement that
 * certainly did not happen. Fire and forget: a failure is logged (the count
 * then stays taken: the safe side). */
void installer_tokens_release(struct pgpool *global, const char *tenant, const char *id);

#endif
