/*
 * fuzz_x509ca.c - libFuzzer harness: the tenant CA checks of the control
 * plane (controlplane/x509ca.c) on an uploaded "certificate" string, the
 * untrusted text of POST /v1/tenants/{t}/certificates and .../verify:
 * strict PEM parsing (one block, nothing around it), then, for what parses,
 * the CA rules, the stored summary, the single CN, the leaf rules, the
 * proof of possession against itself and a device chain check with the
 * certificate as its own CA.
 *
 * Input: the certificate text as sent (PEM).
 */
#include <openssl/err.h>
#include <string.h>

#include "fuzz_util.h"
#include "x509ca.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_str(data, size), *cn, err[160];
    struct x509ca_err e;
    struct x509ca_info info;
    X509 *x;

    memset(&e, 0, sizeof e);
    x = x509ca_parse_one(text, &e);
    if (!x) {
        if (e.status != 400 || !memchr(e.code, 0, sizeof e.code) || !e.code[0])
            abort();
        free(text);
        return 0;
    }
    if (!x509ca_check_ca(x, &e) && (e.status != 422 || !e.code[0]))
        abort();
    if (x509ca_info(x, &info) && strlen(info.thumbprint) != 64)
        abort();
    cn = x509ca_cn(x);
    (void)x509ca_check_proof(x, x, cn ? cn : "0123456789ABCDEF0123456789ABCDEF", &e);
    free(cn);
    (void)x509ca_leaf_usable(x, err, sizeof err);
    (void)x509ca_verify_device(&x, 1, x, NULL, err, sizeof err);
    X509_free(x);
    ERR_clear_error();
    free(text);
    return 0;
}
