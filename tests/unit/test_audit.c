/*
 * test_audit.c - the audit log's pure parts (controlplane/audit.c): what is
 * redacted before an entry is stored (members named like a secret, values
 * that look like one, at any depth, nothing else), and the RFC 3339 times
 * GET /v1/audit takes in since/until.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"

static void expect_redacted(const char *in, const char *want)
{
    json_t *v = json_loads(in, 0, NULL), *w = json_loads(want, 0, NULL);
    assert_non_null(v);
    assert_non_null(w);
    audit_redact(v);
    if (!json_equal(v, w)) {
        char *got = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
        fail_msg("redact(%s) = %s, want %s", in, got, want);
    }
    json_decref(v);
    json_decref(w);
}

static void test_redact_names(void **state)
{
    (void)state;
    expect_redacted("{\"id\":\"acme\",\"name\":\"Acme\",\"enrollmentKey\":\"abc=\"}",
                    "{\"id\":\"acme\",\"name\":\"Acme\",\"enrollmentKey\":\"[redacted]\"}");
    expect_redacted("{\"serviceKey\":\"x\",\"serviceKeyName\":\"owner\",\"serviceKeyConfigured\":true}",
                    "{\"serviceKey\":\"[redacted]\",\"serviceKeyName\":\"owner\",\"serviceKeyConfigured\":true}");
    expect_redacted("{\"key\":\"k\",\"token\":\"t\",\"secret\":\"s\",\"password\":\"p\",\"Token\":\"T\"}",
                    "{\"key\":\"[redacted]\",\"token\":\"[redacted]\",\"secret\":\"[redacted]\","
                    "\"password\":\"[redacted]\",\"Token\":\"[redacted]\"}");
    expect_redacted("{\"a\":{\"primaryKey\":\"p\",\"b\":[{\"privateKey\":{\"d\":1}},{\"clientSecret\":\"c\"}]}}",
                    "{\"a\":{\"primaryKey\":\"[redacted]\",\"b\":[{\"privateKey\":\"[redacted]\"},"
                    "{\"clientSecret\":\"[redacted]\"}]}}");
    /* not secrets: ids, counts, lowercase words that merely end in "key" */
    expect_redacted("{\"keyId\":\"k1\",\"monkey\":\"m\",\"keys\":2,\"scopes\":[\"tenants:read\"]}",
                    "{\"keyId\":\"k1\",\"monkey\":\"m\",\"keys\":2,\"scopes\":[\"tenants:read\"]}");
    /* a null secret stays null (nothing to hide) */
    expect_redacted("{\"enrollmentKey\":null}", "{\"enrollmentKey\":null}");
}

static void test_redact_values(void **state)
{
    (void)state;
    expect_redacted("{\"note\":\"cpk_0123456789abcdef_secret\",\"list\":[\"cpi_abc\",\"plain\"]}",
                    "{\"note\":\"[redacted]\",\"list\":[\"[redacted]\",\"plain\"]}");
    expect_redacted("{\"auth\":\"SharedAccessSignature sr=a&sig=b\",\"stored\":\"enc:v1:k1:AAAA\"}",
                    "{\"auth\":\"[redacted]\",\"stored\":\"[redacted]\"}");
    expect_redacted("{\"pem\":\"-----BEGIN PRIVATE KEY-----\\nMII\\n-----END PRIVATE KEY-----\\n\","
                    "\"cert\":\"-----BEGIN CERTIFICATE-----\\nMII\\n-----END CERTIFICATE-----\\n\"}",
                    "{\"pem\":\"[redacted]\",\"cert\":\"-----BEGIN CERTIFICATE-----\\nMII\\n-----END CERTIFICATE-----\\n\"}");
}

static void test_parse_time(void **state)
{
    long long us = 0;
    (void)state;
    assert_true(audit_parse_time("1970-01-01T00:00:00Z", &us));
    assert_int_equal(us, 0);
    assert_true(audit_parse_time("2026-12-04T09:00:00Z", &us));
    assert_int_equal(us, 1796374800LL * 1000000);
    assert_true(audit_parse_time("2026-12-04T11:00:00+02:00", &us));
    assert_int_equal(us, 1796374800LL * 1000000);
    assert_true(audit_parse_time("2026-12-04T09:00:00.25z", &us));
    assert_int_equal(us, 1796374800LL * 1000000 + 250000);
    assert_true(audit_parse_time("2026-12-04T09:00:00.123456-01:30", &us));
    assert_int_equal(us, (1796374800LL + 5400) * 1000000 + 123456);
    assert_false(audit_parse_time("2026-12-04T09:00:00", &us));
    assert_false(audit_parse_time("2026-12-04", &us));
    assert_false(audit_parse_time("yesterday", &us));
    assert_false(audit_parse_time("2026-13-04T09:00:00Z", &us));
    assert_false(audit_parse_time("2026-12-04T09:00:00.Z", &us));
    assert_false(audit_parse_time("2026-12-04T09:00:00+24:00", &us));
    assert_false(audit_parse_time("2026-12-04T09:00:00Zjunk", &us));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redact_names),
        cmocka_unit_test(test_redact_values),
        cmocka_unit_test(test_parse_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
