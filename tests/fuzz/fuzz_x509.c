/*
 * fuzz_x509.c - libFuzzer harness: X.509 certificates as enrollment documents
 * and TLS clients present them (stamp-agent/dps_x509.c, dps_svc_doc.c):
 * dps_x509_parse (PEM or whitespace-separated base64 DER), the subject CN a
 * registration id is matched against, the certificateInfo object, leaf
 * checks, self-verification, and PEM re-encoding.
 *
 * Input: one mode byte, then the certificate. Mode bit 0 clear: the text as
 * an enrollment would carry it. Set: raw DER, base64-encoded by the harness
 * (line-wrapped when bit 1 is set) so mutations reach the ASN.1 and the
 * accessors rather than the base64 layer.
 */
#include <openssl/err.h>
#include <openssl/evp.h>
#include <string.h>

#include "dps_svc_doc.h"
#include "dps_x509.h"
#include "fuzz_util.h"

static char *b64(const uint8_t *data, size_t size, bool wrap)
{
    size_t n = 4 * ((size + 2) / 3);
    char *enc = malloc(n + 1), *out;
    size_t o = 0;
    if (!enc)
        abort();
    EVP_EncodeBlock((unsigned char *)enc, data, (int)size);
    if (!wrap)
        return enc;
    out = malloc(n + n / 64 + 2);
    if (!out)
        abort();
    for (size_t i = 0; i < n; i++) {
        if (i && i % 64 == 0)
            out[o++] = '\n';
        out[o++] = enc[i];
    }
    out[o] = '\0';
    free(enc);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text, *cn, *pem, err[256];
    json_t *info;
    X509 *c, *again;

    if (size < 1)
        return 0;
    text = (data[0] & 1) ? b64(data + 1, size - 1, data[0] & 2) : fuzz_str(data + 1, size - 1);
    c = dps_x509_parse(text);
    free(text);
    if (c) {
        cn = dps_x509_cn(c);
        free(cn);
        if (!dps_x509_same(c, c))
            abort();
        info = dps_x509_info(c);
        json_decref(info);
        info = dsv_cert_info(c);
        if (!info)   /* dsv_normalize would silently drop the certificate */
            abort();
        json_decref(info);
        (void)dps_x509_leaf_usable(c, err, sizeof err);
        (void)dps_x509_verify(c, c, NULL, err, sizeof err);
        pem = dsv_cert_pem(c);
        if (pem) {
            /* what the service API stores parses back to the same certificate */
            again = dps_x509_parse(pem);
            if (again && !dps_x509_same(c, again))
                abort();
            X509_free(again);
            free(pem);
        }
        X509_free(c);
    }
    ERR_clear_error();
    return 0;
}
