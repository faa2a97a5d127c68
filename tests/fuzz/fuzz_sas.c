/*
 * fuzz_sas.c - libFuzzer harness: SharedAccessSignature tokens (common/sas.c)
 * as a device or service client sends them in Authorization, including the
 * URL-decoding of sr/sig/skn and the base64 decoding of the signature.
 *
 * Input: the header value. Parsed tokens go through the claim check and
 * signature verification; the input is also given to the base64 decoder.
 */
#include <string.h>

#include "fuzz_util.h"
#include "sas.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned char key[SAS_KEY_LEN] = "0123456789abcdef0123456789abcdef";
    char *s = fuzz_str(data, size);
    unsigned char out[1024];
    struct sas_token t;
    int n;

    if (sas_parse(s, &t) == SAS_OK) {
        /* whatever was accepted stays inside the fixed buffers, NUL-terminated */
        if (strlen(t.sr) >= sizeof t.sr || strlen(t.sig) >= sizeof t.sig || strlen(t.se) >= sizeof t.se ||
            strlen(t.skn) >= sizeof t.skn || strlen(t.sr_decoded) >= sizeof t.sr_decoded || t.expiry < 0)
            abort();
        (void)sas_check_claims(&t, "0ne00000A0A", "my-device-01", 1700000000);
        (void)sas_check_claims(&t, "", "", 0);
        (void)sas_verify(&t, key, sizeof key);
    }
    n = sas_b64_decode(s, out, sizeof out);
    if (n > (int)sizeof out)
        abort();
    if (n > 0) {
        /* a decoded value re-encodes to the same length (padding included) */
        char enc[1400];
        sas_b64_encode(out, (size_t)n, enc, sizeof enc);
        if (strlen(enc) != strlen(s))
            abort();
    }
    free(s);
    return 0;
}
