/*
 * idempotency.h - Idempotency-Key on the admin API's creates (every POST
 * on an admin route): a retried request gets the first one's answer
 * instead of doing the work twice.
 *
 *   - A key is 1-255 visible ASCII characters (0x21-0x7e), else 400
 *     invalid_value (target "Idempotency-Key"). Keys are scoped by caller
 *     (the API key's id, or the operator token): two callers never see
 *     each other's keys.
 *   - The first request with a key claims it (a 'pending' row), then runs.
 *     A 2xx answer is stored (status, body, Location) for 24 h, sealed
 *     (common/envelope.h) because it may hold a secret shown once (an
 *     enrollment key, an API key). Any other answer releases the key:
 *     4xx changed nothing and 5xx may be retried, with the same key.
 *   - The same key with the same request (method, path and query, SHA-256
 *     of the body, same caller) replays the stored answer, with the header
 *     Idempotent-Replayed: true. With a different request: 422
 *     idempotency_mismatch. While the first is still running: 409
 *     idempotency_in_progress with Retry-After. A claim left 'pending' by a
 *     control plane that died is taken over after IDEM_PENDING_STALE_S.
 *   - Expired rows are purged every IDEM_PURGE_MS.
 *
 * Ownership: struct idempotency (the purge timer) is made by
 * idempotency_new and freed by idempotency_free. A request's claim
 * (cp_req.idem) belongs to the request and is freed with it
 * (idempotency_claim_free).
 */
#ifndef CP_IDEMPOTENCY_H
#define CP_IDEMPOTENCY_H

#include <stdbool.h>
#include <stddef.h>

#include "cp.h"
#include "http_req.h"

#define IDEM_TTL_HOURS 24
#define IDEM_PENDING_STALE_S 120
#define IDEM_PURGE_MS (10 * 60 * 1000)
#define IDEM_KEY_MAX 255

struct idempotency;

struct idempotency *idempotency_new(struct cp *cp);
void idempotency_free(struct idempotency *d);

/*
 * Before an admin request runs: when it is a POST with an Idempotency-Key,
 * claim the key and call next(r), or answer (replay, 400, 409, 422, 503)
 * without calling it. Any other request: next(r) at once. Either next is
 * called once or r is answered once.
 */
void idempotency_begin(struct cp_req *r, void (*next)(struct cp_req *r));

/* Whether r holds a claim whose outcome must be written before the answer goes out. */
bool idempotency_wanted(const struct cp_req *r, int status);

/* Store the answer (2xx) or release the claim, then done(r) exactly once
 * (also when the write fails, which is logged). body is copied before
 * this returns. */
void idempotency_complete(struct cp_req *r, int status, const char *body, size_t len,
                          void (*done)(struct cp_req *r));

void idempotency_claim_free(struct idem_claim *c);

#endif
