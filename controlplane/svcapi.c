/*
 * svcapi.c - the service key and the signed headers of a call to a stamp's
 * DPS service API (svcapi.h).
 */
#include "svcapi.h"

#include "envelope.h"
#include "sas.h"
#include "util.h"

int svcapi_key_open(struct envelope *env, const char *dps_id, const char *sealed, unsigned char *key, size_t cap)
{
    char aad[ENVELOPE_AAD_MAX];
    size_t len = 0;
    if (!sealed)
        return -1;
    envelope_aad_service_key(aad, sizeof aad, dps_id);   /* the key is bound to its instance */
    return envelope_open_b64key(env, sealed, aad, key, cap, &len) && len > 0 ? (int)len : -1;
}

int svcapi_headers(const char **h, char *sas, size_t saslen, const char *sr, const unsigned char *key, size_t keylen,
                   const char *key_name, const char *if_match)
{
    int n = 0;
    sas_build(sr, key, keylen, util_wall_ms() / 1000 + 3600, key_name, sas, saslen);
    h[n++] = "Authorization"; h[n++] = sas;
    h[n++] = "Accept"; h[n++] = "application/json";
    h[n++] = "Content-Type"; h[n++] = "application/json; charset=utf-8";
    h[n++] = "User-Agent"; h[n++] = "stampcp-controlplane";
    if (if_match && *if_match) { h[n++] = "If-Match"; h[n++] = if_match; }
    h[n] = NULL;
    return n;
}
