/*
 * sd_crypto.h - libstampdevice: the little cryptography a device needs.
 *
 * HMAC-SHA256 (OpenSSL), base64, the URL encoding of a SAS signature and the
 * SharedAccessSignature token itself, exactly as the Azure DPS device SDKs
 * build it (../shared/specs/dps-wire.md §4.1):
 *
 *   SharedAccessSignature sr={sr}&sig={urlenc(base64(HMAC(key, sr "\n" se)))}&skn=registration&se={se}
 *
 * with sr sent raw (not URL-encoded). Self-contained on purpose: the device
 * library does not link the daemons' common/ code. sd_derive_key (declared
 * in sd_machine.h) lives in sd_crypto.c too.
 */
#ifndef STAMPDEVICE_SD_CRYPTO_H
#define STAMPDEVICE_SD_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SD_CRYPTO_MAC_LEN 32

/* out = HMAC-SHA256(key, msg). */
void sd_crypto_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                           unsigned char out[SD_CRYPTO_MAC_LEN]);

/* Standard padded base64 into out (NUL-terminated). False if out is too small. */
bool sd_crypto_b64_encode(const unsigned char *in, size_t len, char *out, size_t outlen);

/* Decode standard padded base64 (a group or device key from a config file).
 * Returns the byte count, or -1 when the text is not base64 or out is too small. */
int sd_crypto_b64_decode(const char *in, unsigned char *out, size_t outlen);

/* encodeURIComponent plus !'()*: everything but [A-Za-z0-9-_.~] becomes %XX.
 * False if out is too small. */
bool sd_crypto_url_encode(const char *in, char *out, size_t outlen);

/* The whole Authorization header value for resource sr, signed with key, expiring at
 * Unix second expiry (skn=registration). False if out is too small. */
bool sd_crypto_sas(const char *sr, const unsigned char *key, size_t keylen, int64_t expiry, char *out,
                   size_t outlen);

#endif
