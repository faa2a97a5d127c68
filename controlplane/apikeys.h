/*
 * apikeys.h - verifying API keys (cpk_<id>_<secret>) for the gate: a small
 * read-through cache over the global catalog's api_keys table.
 *
 * A key's row is re-read at most APIKEYS_FRESH_MS after it was fetched, so
 * a revocation, rotation or expiry committed anywhere takes effect at every
 * control plane within that time even if Redis is down; the revoking
 * instance also announces it (Redis "apikey <id>") so the others drop their
 * copy at once. Concurrent verifications of one key share one query.
 *
 * Only the SHA-256 of a secret is kept, in memory as in the database.
 *
 * Ownership: the cache owns its entries. A principal handed to a callback
 * is borrowed for the duration of the call (copy it).
 */
#ifndef CP_APIKEYS_H
#define CP_APIKEYS_H

#include <stdbool.h>
#include <stddef.h>

#include "pgpool.h"
#include "principal.h"

#define APIKEYS_FRESH_MS 1000
#define APIKEY_ID_LEN 16           /* hex characters */
#define APIKEY_SECRET_LEN 64       /* hex characters: 256 bits */
#define APIKEY_PREFIX "cpk_"

enum apikey_verdict {
    APIKEY_OK,            /* p is the caller */
    APIKEY_INVALID,       /* unknown id, wrong secret, revoked, expired, tenant removed */
    APIKEY_UNAVAILABLE,   /* the catalog did not answer and no fresh copy is held */
    APIKEY_BUSY,          /* not held, and the budget for queries of unknown ids is spent: try again */
};

typedef void (*apikeys_cb)(enum apikey_verdict v, const struct principal *p, void *arg);

struct apikeys;

struct apikeys *apikeys_new(struct pgpool *global);
/* Callbacks still waiting are dropped without a call: free it only at shutdown. */
void apikeys_free(struct apikeys *k);

/* Whether token has the shape cpk_<16 hex>_<64 hex>; fills id and secret (NUL-terminated). */
bool apikeys_parse(const char *token, char id[APIKEY_ID_LEN + 1], char secret[APIKEY_SECRET_LEN + 1]);

/* Verify a bearer token. cb runs exactly once, possibly before this returns. */
void apikeys_verify(struct apikeys *k, const char *token, apikeys_cb cb, void *arg);

/* Without waiting (the check made before a request body is read): false
 * only when the token is certainly refused (bad shape, or a fresh cached
 * copy refuses it); true means "maybe": the gate verifies it afterwards. */
bool apikeys_maybe_valid(struct apikeys *k, const char *token);

/* Drop the cached copy of key id (after a change here or an announcement). */
void apikeys_forget(struct apikeys *k, const char *id);
/* Every key is re-read at its next use: the invalidation subscription was
 * lost or came back, so announcements may have been missed. */
void apikeys_forget_all(struct apikeys *k);

/* SHA-256 of a secret as 64 hex characters (out: 65 bytes). */
void apikeys_hash_hex(const char *secret, char out[65]);

#endif
