/*
 * dps_secrets.h - the stamp's enrollment keys at rest.
 *
 * The primaryKey and secondaryKey of every symmetric-key enrollment (groups
 * and individual enrollments) are stored in dps_enrollments.doc sealed
 * (common/envelope.h) with the AAD
 *     "stamp:<dpsId>:<kind>:<enrollmentId>:symmetric-key"
 * (kind "group" or "individual", as the kind column), so a value copied to
 * another enrollment's row does not open. The service API seals on write and
 * opens on read (the SDK gets its keys back as Azure DPS returns them); the
 * device API opens them with envelope_open_b64key().
 *
 * This module also owns the agent's re-wrap: at start, and whenever the KEK
 * file's current KEK changes (the file is checked every 2 s), a pass over the
 * agent's own DPS instances seals keys still in clear and re-wraps the rest
 * under the current KEK (common/envelope_db.h).
 *
 * Ownership: the keyring belongs to struct dps_server (s->env, freed with
 * it); dps_secrets borrows the server.
 */
#ifndef STAMPAGENT_DPS_SECRETS_H
#define STAMPAGENT_DPS_SECRETS_H

#include <jansson.h>
#include <stdbool.h>

#include "agent_config.h"
#include "envelope.h"
#include "util.h"

struct dps_server;
struct dps_secrets;

/* The keyring of cfg->kek_file; NULL with err filled when none is configured
 * or the file is refused. */
struct envelope *dps_secrets_load(const struct agent_config *cfg, char *err, size_t errlen) MUSTCHECK;

/* Start the pass and the file watch (s->env must be set). */
struct dps_secrets *dps_secrets_new(struct dps_server *s);
void dps_secrets_free(struct dps_secrets *ds);

/* Seal (or open) attestation.symmetricKey.primaryKey/secondaryKey of an
 * enrollment document in place; att_or_doc is either the whole document or
 * its attestation object. Documents of another attestation type are left
 * alone. False (document unchanged or partly opened: don't send it) if a key
 * does not seal/open. */
bool dps_secrets_seal(struct envelope *env, const char *dps_id, const char *kind, const char *enrollment_id,
                      json_t *att_or_doc) MUSTCHECK;
bool dps_secrets_open(struct envelope *env, const char *dps_id, const char *kind, const char *enrollment_id,
                      json_t *att_or_doc) MUSTCHECK;

#endif
