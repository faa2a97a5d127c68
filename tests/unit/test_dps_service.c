/*
 * test_dps_service.c - the pure half of the DPS service API (dps_svc_doc.c):
 * enrollment documents (good symmetric-key and X.509 groups and individual
 * enrollments, each class of bad one), etags and If-Match, page sizes and
 * continuation tokens, certificate info.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

#include "dps_svc_doc.h"
#include "sas.h"

static struct agent_hub_config test_hubs[] = {
    { .id = "hub1", .host_name = "hub1.azure-devices.net" },
    { .id = "hub2", .host_name = "hub2.azure-devices.net" },
};
static struct agent_provisioning_config test_pc = { .hubs = test_hubs, .n_hubs = 2 };

static char test_pem[4096];
static char test_der_b64[4096];

/* A self-signed EC certificate, as PEM and as base64 DER. */
static int test_setup(void **state)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    BIO *b = BIO_new(BIO_s_mem());
    unsigned char *der = NULL;
    char *data;
    long len;
    int dlen;

    (void)state;
    assert_non_null(key);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 0x1234);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_NAME_add_entry_by_txt(n, "C", MBSTRING_ASC, (const unsigned char *)"US", -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, (const unsigned char *)"Test", -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"signer", -1, -1, 0);
    X509_set_subject_name(x, n);
    X509_set_issuer_name(x, n);
    X509_set_pubkey(x, key);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    PEM_write_bio_X509(b, x);
    len = BIO_get_mem_data(b, &data);
    assert_true(len > 0 && (size_t)len < sizeof test_pem);
    memcpy(test_pem, data, (size_t)len);
    test_pem[len] = '\0';
    dlen = i2d_X509(x, &der);
    assert_true(dlen > 0 && (size_t)(dlen / 3 * 4 + 8) < sizeof test_der_b64);
    EVP_EncodeBlock((unsigned char *)test_der_b64, der, dlen);
    OPENSSL_free(der);
    BIO_free(b);
    X509_NAME_free(n);
    X509_free(x);
    EVP_PKEY_free(key);
    return 0;
}

static json_t *test_json(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j)
        fail_msg("bad test JSON: %s", je.text);
    return j;
}

/* Normalise text as kind/id: expect success and return the document. */
static json_t *test_ok(const char *text, enum dsv_kind kind, const char *id, const char *want_att)
{
    json_t *body = test_json(text), *doc;
    const char *att = NULL;
    struct dsv_err e = {0};
    doc = dsv_normalize(body, kind, id, &test_pc, &att, &e);
    json_decref(body);
    if (!doc)
        fail_msg("rejected: %s (%s)", e.msg, text);
    assert_string_equal(att, want_att);
    return doc;
}

/* Expect a 400 whose message contains want. */
static void test_bad_body(json_t *body, enum dsv_kind kind, const char *id, const char *want)
{
    const char *att = NULL;
    struct dsv_err e = {0};
    json_t *doc = dsv_normalize(body, kind, id, &test_pc, &att, &e);
    if (doc) {
        char *s = json_dumps(body, 0);
        json_decref(doc);
        fail_msg("accepted: %s", s);
    }
    assert_int_equal(e.status, 400);
    assert_int_equal(e.code, DSV_E_INVALID);
    if (!strstr(e.msg, want))
        fail_msg("message '%s' lacks '%s'", e.msg, want);
    json_decref(body);
}

static void test_bad(const char *text, enum dsv_kind kind, const char *id, const char *want)
{
    test_bad_body(test_json(text), kind, id, want);
}

static void test_symmetric_group(void **state)
{
    json_t *doc, *sk;
    unsigned char raw[128];
    (void)state;
    /* Keys omitted: 64 random bytes each; defaults filled; server fields and unknown members dropped. */
    doc = test_ok("{\"enrollmentGroupId\":\"Grp-1\",\"attestation\":{\"type\":\"symmetricKey\"},"
                  "\"etag\":\"\\\"7\\\"\",\"createdDateTimeUtc\":\"x\",\"lastUpdatedDateTimeUtc\":\"y\","
                  "\"registrationState\":{},\"somethingNew\":1,\"iotHubs\":[\"hub1.azure-devices.net\"],"
                  "\"allocationPolicy\":\"hashed\"}", DSV_GROUP, "Grp-1", "symmetricKey");
    sk = json_object_get(json_object_get(doc, "attestation"), "symmetricKey");
    assert_int_equal(sas_b64_decode(json_string_value(json_object_get(sk, "primaryKey")), raw, sizeof raw), 64);
    assert_int_equal(sas_b64_decode(json_string_value(json_object_get(sk, "secondaryKey")), raw, sizeof raw), 64);
    assert_string_not_equal(json_string_value(json_object_get(sk, "primaryKey")),
                            json_string_value(json_object_get(sk, "secondaryKey")));
    assert_string_equal(json_string_value(json_object_get(doc, "provisioningStatus")), "enabled");
    assert_true(json_is_true(json_object_get(json_object_get(doc, "reprovisionPolicy"), "updateHubAssignment")));
    assert_true(json_is_false(json_object_get(json_object_get(doc, "capabilities"), "iotEdge")));
    assert_null(json_object_get(doc, "etag"));
    assert_null(json_object_get(doc, "createdDateTimeUtc"));
    assert_null(json_object_get(doc, "lastUpdatedDateTimeUtc"));
    assert_null(json_object_get(doc, "registrationState"));
    assert_null(json_object_get(doc, "somethingNew"));
    assert_int_equal(json_array_size(json_object_get(doc, "iotHubs")), 1);
    json_decref(doc);

    /* Given keys are kept; custom allocation; twin and reprovision policy kept. */
    doc = test_ok("{\"enrollmentGroupId\":\"g2\",\"attestation\":{\"type\":\"symmetricKey\",\"symmetricKey\":"
                  "{\"primaryKey\":\"AAAAAAAAAAAAAAAAAAAAAA==\",\"secondaryKey\":\"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"}},"
                  "\"provisioningStatus\":\"disabled\",\"allocationPolicy\":\"custom\",\"customAllocationDefinition\":"
                  "{\"webhookUrl\":\"https://fn.example.com/api/alloc?code=1\",\"apiVersion\":\"2021-10-01\"},"
                  "\"reprovisionPolicy\":{\"updateHubAssignment\":false},\"initialTwin\":{\"tags\":{\"a\":1}},"
                  "\"iotHubs\":[],\"tpm\":null}", DSV_GROUP, "g2", "symmetricKey");
    sk = json_object_get(json_object_get(doc, "attestation"), "symmetricKey");
    assert_string_equal(json_string_value(json_object_get(sk, "primaryKey")), "AAAAAAAAAAAAAAAAAAAAAA==");
    assert_string_equal(json_string_value(json_object_get(doc, "provisioningStatus")), "disabled");
    assert_true(json_is_false(json_object_get(json_object_get(doc, "reprovisionPolicy"), "updateHubAssignment")));
    assert_true(json_is_true(json_object_get(json_object_get(doc, "reprovisionPolicy"), "migrateDeviceData")));
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "customAllocationDefinition"),
                                                          "apiVersion")), "2021-10-01");
    assert_non_null(json_object_get(json_object_get(doc, "initialTwin"), "tags"));
    json_decref(doc);
}

static void test_symmetric_individual(void **state)
{
    json_t *doc;
    (void)state;
    doc = test_ok("{\"registrationId\":\"dev-01\",\"deviceId\":\"Device_01\",\"attestation\":{\"type\":\"symmetricKey\","
                  "\"symmetricKey\":{\"primaryKey\":\"AAAAAAAAAAAAAAAAAAAAAA==\"}},\"capabilities\":{\"iotEdge\":true},"
                  "\"iotHubHostName\":\"hub2.azure-devices.net\"}", DSV_INDIVIDUAL, "dev-01", "symmetricKey");
    assert_string_equal(json_string_value(json_object_get(doc, "deviceId")), "Device_01");
    assert_true(json_is_true(json_object_get(json_object_get(doc, "capabilities"), "iotEdge")));
    /* the missing secondary key is generated */
    assert_int_equal(json_string_length(json_object_get(json_object_get(json_object_get(doc, "attestation"),
                                                                        "symmetricKey"), "secondaryKey")), 88);
    json_decref(doc);
}

static json_t *test_x509_body(enum dsv_kind kind, const char *member, const char *cert, bool secondary)
{
    json_t *pair = json_pack("{s:{s:s}}", "primary", "certificate", cert);
    if (secondary)
        json_object_set_new(pair, "secondary", json_pack("{s:s}", "certificate", cert));
    return json_pack("{s:s, s:{s:s, s:{s:o}}}", dsv_id_field(kind), kind == DSV_GROUP ? "xg" : "xd",
                     "attestation", "type", "x509", "x509", member, pair);
}

static void test_x509(void **state)
{
    const char *att = NULL;
    struct dsv_err e;
    json_t *body, *doc, *pri, *info;
    (void)state;

    /* group: signingCertificates, PEM; info filled in like DPS */
    body = test_x509_body(DSV_GROUP, "signingCertificates", test_pem, true);
    doc = dsv_normalize(body, DSV_GROUP, "xg", &test_pc, &att, &e);
    json_decref(body);
    assert_non_null(doc);
    assert_string_equal(att, "x509");
    pri = json_object_get(json_object_get(json_object_get(json_object_get(doc, "attestation"), "x509"),
                                          "signingCertificates"), "primary");
    assert_non_null(pri);
    assert_non_null(strstr(json_string_value(json_object_get(pri, "certificate")), "-----BEGIN CERTIFICATE-----"));
    info = json_object_get(pri, "info");
    assert_string_equal(json_string_value(json_object_get(info, "subjectName")), "CN=signer, O=Test, C=US");
    assert_string_equal(json_string_value(json_object_get(info, "issuerName")), "CN=signer, O=Test, C=US");
    assert_string_equal(json_string_value(json_object_get(info, "serialNumber")), "1234");
    assert_int_equal(json_integer_value(json_object_get(info, "version")), 3);
    assert_int_equal(json_string_length(json_object_get(info, "sha1Thumbprint")), 40);
    assert_int_equal(json_string_length(json_object_get(info, "sha256Thumbprint")), 64);
    assert_int_equal(json_string_length(json_object_get(info, "notAfterUtc")), 20);
    json_decref(doc);

    /* individual: clientCertificates as base64 DER */
    body = test_x509_body(DSV_INDIVIDUAL, "clientCertificates", test_der_b64, false);
    doc = dsv_normalize(body, DSV_INDIVIDUAL, "xd", &test_pc, &att, &e);
    json_decref(body);
    assert_non_null(doc);
    assert_null(json_object_get(json_object_get(json_object_get(json_object_get(doc, "attestation"), "x509"),
                                                "clientCertificates"), "secondary"));
    json_decref(doc);

    /* wrong member for the kind, not a certificate, caReferences, primary missing */
    test_bad_body(test_x509_body(DSV_GROUP, "clientCertificates", test_pem, false), DSV_GROUP, "xg",
                  "not valid for an enrollment group");
    test_bad_body(test_x509_body(DSV_INDIVIDUAL, "signingCertificates", test_pem, false), DSV_INDIVIDUAL, "xd",
                  "not valid for an individual enrollment");
    test_bad_body(test_x509_body(DSV_GROUP, "signingCertificates", "bm90IGEgY2VydA==", false), DSV_GROUP, "xg",
                  "is not an X.509 certificate");
    test_bad_body(test_x509_body(DSV_GROUP, "signingCertificates", "-----BEGIN CERTIFICATE-----\nAAAA\n", false),
                  DSV_GROUP, "xg", "is not an X.509 certificate");
    test_bad("{\"enrollmentGroupId\":\"xg\",\"attestation\":{\"type\":\"x509\",\"x509\":{\"caReferences\":"
             "{\"primary\":\"ca1\"}}}}", DSV_GROUP, "xg", "caReferences is not supported");
    test_bad("{\"enrollmentGroupId\":\"xg\",\"attestation\":{\"type\":\"x509\",\"x509\":{\"signingCertificates\":"
             "{\"secondary\":{\"certificate\":\"x\"}}}}}", DSV_GROUP, "xg", "primary is required");
    test_bad("{\"enrollmentGroupId\":\"xg\",\"attestation\":{\"type\":\"x509\"}}", DSV_GROUP, "xg",
             "attestation.x509 is required");
}

static void test_bad_documents(void **state)
{
    const char *att;
    struct dsv_err e;
    json_t *arr = json_array();
    (void)state;
#define SK "\"attestation\":{\"type\":\"symmetricKey\"}"
    /* ids */
    test_bad("{" SK "}", DSV_GROUP, "g", "enrollmentGroupId is required");
    test_bad("{\"enrollmentGroupId\":\"other\"," SK "}", DSV_GROUP, "g", "does not match");
    test_bad("{\"registrationId\":\"Dev1\"," SK "}", DSV_INDIVIDUAL, "Dev1", "lower-case");
    test_bad("{\"registrationId\":\"dev_\"," SK "}", DSV_INDIVIDUAL, "dev_", "registrationId must be");
    test_bad("{\"enrollmentGroupId\":\"a b\"," SK "}", DSV_GROUP, "a b", "enrollmentGroupId must be");
    test_bad_body(json_string("x"), DSV_GROUP, "g", "must be a JSON object");
    /* attestation */
    test_bad("{\"enrollmentGroupId\":\"g\"}", DSV_GROUP, "g", "attestation is required");
    test_bad("{\"enrollmentGroupId\":\"g\",\"attestation\":{}}", DSV_GROUP, "g", "attestation.type is required");
    test_bad("{\"enrollmentGroupId\":\"g\",\"attestation\":{\"type\":\"tpm\",\"tpm\":{\"endorsementKey\":\"x\"}}}",
             DSV_GROUP, "g", "TPM attestation is not supported");
    test_bad("{\"enrollmentGroupId\":\"g\",\"attestation\":{\"type\":\"none\"}}", DSV_GROUP, "g",
             "symmetricKey or x509");
    test_bad("{\"enrollmentGroupId\":\"g\",\"attestation\":{\"type\":\"symmetricKey\",\"symmetricKey\":"
             "{\"primaryKey\":\"AAAA\"}}}", DSV_GROUP, "g", "base64 of 16 to 64 bytes");
    test_bad("{\"enrollmentGroupId\":\"g\",\"attestation\":{\"type\":\"symmetricKey\",\"symmetricKey\":"
             "{\"secondaryKey\":\"not base64!\"}}}", DSV_GROUP, "g", "secondaryKey must be base64");
    test_bad("{\"enrollmentGroupId\":\"g\",\"attestation\":{\"type\":\"symmetricKey\",\"symmetricKey\":"
             "{\"primaryKey\":7}}}", DSV_GROUP, "g", "must be a string");
    /* other fields */
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"provisioningStatus\":\"on\"}", DSV_GROUP, "g", "provisioningStatus");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"allocationPolicy\":\"random\"}", DSV_GROUP, "g", "allocationPolicy");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"allocationPolicy\":\"custom\"}", DSV_GROUP, "g",
             "customAllocationDefinition");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"allocationPolicy\":\"custom\",\"customAllocationDefinition\":"
             "{\"webhookUrl\":\"ftp://x\",\"apiVersion\":\"2021-10-01\"}}", DSV_GROUP, "g", "webhookUrl");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"allocationPolicy\":\"custom\",\"customAllocationDefinition\":"
             "{\"webhookUrl\":\"https://x/y\"}}", DSV_GROUP, "g", "apiVersion");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"iotHubs\":[\"other.azure-devices.net\"]}", DSV_GROUP, "g",
             "is not a hub of this stamp");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"iotHubs\":[1]}", DSV_GROUP, "g", "iotHubs[0] must be a string");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"iotHubs\":\"hub1.azure-devices.net\"}", DSV_GROUP, "g", "iotHubs must");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"iotHubHostName\":\"x\"}", DSV_GROUP, "g", "iotHubHostName");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"reprovisionPolicy\":{\"migrateDeviceData\":\"yes\"}}", DSV_GROUP,
             "g", "booleans");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"initialTwin\":[]}", DSV_GROUP, "g", "initialTwin");
    test_bad("{\"enrollmentGroupId\":\"g\"," SK ",\"capabilities\":{\"iotEdge\":1}}", DSV_GROUP, "g", "iotEdge");
    test_bad("{\"registrationId\":\"d\"," SK ",\"deviceId\":\"a b\"}", DSV_INDIVIDUAL, "d", "deviceId");
#undef SK
    /* more than 50 hubs */
    for (int i = 0; i < 51; i++)
        json_array_append_new(arr, json_string("hub1.azure-devices.net"));
    test_bad_body(json_pack("{s:s, s:{s:s}, s:o}", "enrollmentGroupId", "g", "attestation", "type", "symmetricKey",
                            "iotHubs", arr), DSV_GROUP, "g", "at most 50");
    (void)att;
    (void)e;
}

static void test_ids(void **state)
{
    char long_id[130];
    (void)state;
    assert_true(dsv_valid_id(DSV_INDIVIDUAL, "dev-1.a_b:c"));
    assert_true(dsv_valid_id(DSV_INDIVIDUAL, "x-"));
    assert_false(dsv_valid_id(DSV_INDIVIDUAL, "x."));
    assert_false(dsv_valid_id(DSV_INDIVIDUAL, "Dev"));
    assert_true(dsv_valid_id(DSV_GROUP, "Group-A"));
    assert_false(dsv_valid_id(DSV_GROUP, ""));
    assert_false(dsv_valid_id(DSV_GROUP, "a/b"));
    memset(long_id, 'a', 128);
    long_id[128] = '\0';
    assert_true(dsv_valid_id(DSV_GROUP, long_id));
    long_id[128] = 'a';
    long_id[129] = '\0';
    assert_false(dsv_valid_id(DSV_GROUP, long_id));
}

static void test_etags(void **state)
{
    int64_t etag;
    char buf[32];
    json_t *body;
    (void)state;
    dsv_etag_format(3, buf, sizeof buf);
    assert_string_equal(buf, "\"3\"");

    assert_int_equal(dsv_if_match(NULL, NULL, &etag), DSV_MATCH_NONE);
    assert_int_equal(dsv_if_match("", NULL, &etag), DSV_MATCH_NONE);
    assert_int_equal(dsv_if_match("\"3\"", NULL, &etag), DSV_MATCH_VALUE);
    assert_int_equal(etag, 3);
    assert_int_equal(dsv_if_match("12", NULL, &etag), DSV_MATCH_VALUE);
    assert_int_equal(etag, 12);
    assert_int_equal(dsv_if_match("W/\"4\"", NULL, &etag), DSV_MATCH_VALUE);
    assert_int_equal(etag, 4);
    assert_int_equal(dsv_if_match(" * ", NULL, &etag), DSV_MATCH_ANY);
    /* etags we never issue match nothing (a real-DPS etag, 0, negative) */
    assert_int_equal(dsv_if_match("\"13003fea-0000-0300-0000-62d1d5e50000\"", NULL, &etag), DSV_MATCH_NEVER);
    assert_int_equal(dsv_if_match("\"0\"", NULL, &etag), DSV_MATCH_NEVER);
    assert_int_equal(dsv_if_match("\"-1\"", NULL, &etag), DSV_MATCH_NEVER);
    assert_int_equal(dsv_if_match("\"\"", NULL, &etag), DSV_MATCH_NEVER);

    /* the body etag counts when there is no header; the header wins */
    body = test_json("{\"etag\":\"\\\"5\\\"\"}");
    assert_int_equal(dsv_if_match(NULL, body, &etag), DSV_MATCH_VALUE);
    assert_int_equal(etag, 5);
    assert_int_equal(dsv_if_match("\"6\"", body, &etag), DSV_MATCH_VALUE);
    assert_int_equal(etag, 6);
    json_decref(body);
    body = test_json("{\"etag\":null}");
    assert_int_equal(dsv_if_match(NULL, body, &etag), DSV_MATCH_NONE);
    json_decref(body);

    /* SQL parameters */
    assert_null(dsv_match_param(DSV_MATCH_NONE, 0, buf, sizeof buf));
    assert_null(dsv_match_param(DSV_MATCH_ANY, 0, buf, sizeof buf));
    assert_string_equal(dsv_match_param(DSV_MATCH_NEVER, 0, buf, sizeof buf), "0");
    assert_string_equal(dsv_match_param(DSV_MATCH_VALUE, 42, buf, sizeof buf), "42");
}

static void test_paging(void **state)
{
    int n;
    char tok[DSV_TOKEN_MAX], id[DSV_ID_MAX + 1], long_id[DSV_ID_MAX + 1];
    static const char *const ids[] = {"a", "ab", "abc", "grp-b", "dev:1.x_y", "\xc3\xa9t\xc3\xa9", "+/?="};
    (void)state;
    assert_true(dsv_page_size(NULL, &n));
    assert_int_equal(n, 100);
    assert_true(dsv_page_size("5", &n));
    assert_int_equal(n, 5);
    assert_true(dsv_page_size("5000", &n));
    assert_int_equal(n, 1000);
    assert_false(dsv_page_size("0", &n));
    assert_false(dsv_page_size("-3", &n));
    assert_false(dsv_page_size("ten", &n));
    assert_false(dsv_page_size("", &n));

    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        dsv_token_encode(ids[i], tok, sizeof tok);
        assert_true(strncmp(tok, "c1", 2) == 0);
        assert_null(strpbrk(tok, "+/= "));          /* header-safe */
        assert_true(dsv_token_decode(tok, id, sizeof id));
        assert_string_equal(id, ids[i]);
    }
    memset(long_id, 'z', DSV_ID_MAX);
    long_id[DSV_ID_MAX] = '\0';
    dsv_token_encode(long_id, tok, sizeof tok);
    assert_true(dsv_token_decode(tok, id, sizeof id));
    assert_string_equal(id, long_id);

    assert_false(dsv_token_decode(NULL, id, sizeof id));
    assert_false(dsv_token_decode("", id, sizeof id));
    assert_false(dsv_token_decode("c1", id, sizeof id));
    assert_false(dsv_token_decode("tok123", id, sizeof id));
    assert_false(dsv_token_decode("c1YQ==", id, sizeof id));    /* padding is never sent */
    assert_false(dsv_token_decode("c1Y", id, sizeof id));       /* 1 char mod 4 */
    assert_false(dsv_token_decode("c1AA", id, sizeof id));      /* NUL byte */
    assert_false(dsv_token_decode("c1/w", id, sizeof id));      /* standard alphabet */
    assert_false(dsv_token_decode("c1_w", id, sizeof id));      /* 0xff: not UTF-8 */
}

static void test_cert_parse(void **state)
{
    X509 *x;
    char *spaced;
    (void)state;
    assert_null(dsv_cert_parse(NULL));
    assert_null(dsv_cert_parse(""));
    assert_null(dsv_cert_parse("AAAA"));
    x = dsv_cert_parse(test_pem);
    assert_non_null(x);
    X509_free(x);
    x = dsv_cert_parse(test_der_b64);
    assert_non_null(x);
    X509_free(x);
    /* base64 DER wrapped over lines */
    spaced = calloc(1, strlen(test_der_b64) * 2 + 2);
    for (size_t i = 0, o = 0; test_der_b64[i]; i++) {
        spaced[o++] = test_der_b64[i];
        if (i % 64 == 63)
            spaced[o++] = '\n';
    }
    x = dsv_cert_parse(spaced);
    assert_non_null(x);
    X509_free(x);
    free(spaced);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_symmetric_group),
        cmocka_unit_test(test_symmetric_individual),
        cmocka_unit_test(test_x509),
        cmocka_unit_test(test_bad_documents),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_etags),
        cmocka_unit_test(test_paging),
        cmocka_unit_test(test_cert_parse),
    };
    return cmocka_run_group_tests(tests, test_setup, NULL);
}
