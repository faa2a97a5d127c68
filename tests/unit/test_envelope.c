/*
 * test_envelope.c - envelope encryption of secrets at rest (common/envelope.c):
 * round trips, the stored form, wrong KEK, unknown KEK id, wrong AAD,
 * tampering anywhere in the value, re-wrapping under a new current KEK,
 * clear values (migration), and the KEK file's format and permission checks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "envelope.h"
#include "sas.h"
#include "util.h"

#define K1 "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="   /* 32 bytes */
#define K2 "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="   /* 32 bytes */
#define K3 "enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6enp6"   /* not 32 bytes */
#define GROUP_KEY "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
#define AAD_A "tenant:a:enrollment-key"
#define AAD_B "tenant:b:enrollment-key"

static struct envelope *ring(const char *json)
{
    char err[300];
    struct envelope *e = envelope_from_text(json, err, sizeof err);
    if (!e)
        fail_msg("keyring: %s", err);
    return e;
}

static struct envelope *ring_k1(void)
{
    return ring("{\"current\":\"k1\",\"keys\":{\"k1\":\"" K1 "\"}}");
}

static void test_round_trip(void **state)
{
    struct envelope *e = ring_k1();
    unsigned char raw[64], out[64];
    size_t len = 0;
    char *s;
    (void)state;
    assert_int_equal(sas_b64_decode(GROUP_KEY, raw, sizeof raw), 32);
    s = envelope_seal_text(e, GROUP_KEY, AAD_A);
    assert_non_null(s);
    assert_true(strncmp(s, "enc:v1:k1:", 10) == 0);
    assert_null(strstr(s, GROUP_KEY));
    assert_true(envelope_is_sealed(s));
    assert_true(envelope_is_current(e, s));
    assert_true(envelope_open_b64key(e, s, AAD_A, out, sizeof out, &len));
    assert_int_equal(len, 32);
    assert_memory_equal(out, raw, 32);
    {
        char text[100];
        assert_int_equal(envelope_open_text(e, s, AAD_A, text, sizeof text), ENVELOPE_OK);
        assert_string_equal(text, GROUP_KEY);
    }
    /* two seals of one secret differ (fresh DEK and nonces) */
    {
        char *s2 = envelope_seal_text(e, GROUP_KEY, AAD_A);
        assert_string_not_equal(s, s2);
        free(s2);
    }
    /* binary round trip, empty plaintext too */
    {
        char *b = envelope_seal(e, raw, 0, AAD_A);
        assert_int_equal(envelope_open(e, b, AAD_A, out, sizeof out, &len), ENVELOPE_OK);
        assert_int_equal(len, 0);
        free(b);
    }
    free(s);
    envelope_free(e);
}

static void test_wrong_aad_and_kek(void **state)
{
    struct envelope *e = ring_k1();
    struct envelope *other = ring("{\"current\":\"k1\",\"keys\":{\"k1\":\"" K2 "\"}}");
    struct envelope *no_k1 = ring("{\"current\":\"k2\",\"keys\":{\"k2\":\"" K2 "\"}}");
    unsigned char out[64];
    size_t len = 99;
    char *s = envelope_seal_text(e, GROUP_KEY, AAD_A);
    (void)state;
    /* another tenant's row: the AAD differs */
    assert_int_equal(envelope_open(e, s, AAD_B, out, sizeof out, &len), ENVELOPE_AUTH_FAILED);
    assert_int_equal(len, 0);
    assert_false(envelope_open_b64key(e, s, AAD_B, out, sizeof out, &len));
    /* same id, other key material */
    assert_int_equal(envelope_open(other, s, AAD_A, out, sizeof out, &len), ENVELOPE_AUTH_FAILED);
    /* a KEK id the ring does not hold */
    assert_int_equal(envelope_open(no_k1, s, AAD_A, out, sizeof out, &len), ENVELOPE_UNKNOWN_KEK);
    assert_false(envelope_open_b64key(no_k1, s, AAD_A, out, sizeof out, &len));
    /* too small a buffer */
    assert_int_equal(envelope_open(e, s, AAD_A, out, 10, &len), ENVELOPE_TOO_LARGE);
    free(s);
    envelope_free(e);
    envelope_free(other);
    envelope_free(no_k1);
}

static void test_tampered(void **state)
{
    struct envelope *e = ring_k1();
    char *s = envelope_seal_text(e, GROUP_KEY, AAD_A);
    size_t pre = strlen("enc:v1:k1:"), n = strlen(s);
    unsigned char blob[400], out[64];
    size_t len;
    int bl;
    (void)state;
    bl = sas_b64_decode(s + pre, blob, sizeof blob);
    assert_true(bl > 88);
    /* flip every byte of the blob in turn: wrapped DEK, tags, nonces, ciphertext */
    for (int i = 0; i < bl; i++) {
        char *t = xstrdup(s);
        blob[i] ^= 0x01;
        sas_b64_encode(blob, (size_t)bl, t + pre, n - pre + 1);
        blob[i] ^= 0x01;
        assert_int_equal(envelope_open(e, t, AAD_A, out, sizeof out, &len), ENVELOPE_AUTH_FAILED);
        free(t);
    }
    /* a truncated value, a bad version, a bad id, garbage */
    {
        char *t = xstrndup(s, n - 8);
        assert_int_not_equal(envelope_open(e, t, AAD_A, out, sizeof out, &len), ENVELOPE_OK);
        free(t);
    }
    assert_int_equal(envelope_open(e, "enc:v2:k1:AAAA", AAD_A, out, sizeof out, &len), ENVELOPE_MALFORMED);
    assert_int_equal(envelope_open(e, "enc:v1:k 1:AAAA", AAD_A, out, sizeof out, &len), ENVELOPE_MALFORMED);
    assert_int_equal(envelope_open(e, "enc:v1:k1:AAAA", AAD_A, out, sizeof out, &len), ENVELOPE_MALFORMED);
    assert_int_equal(envelope_open(e, "enc:v1:k1:!!!!", AAD_A, out, sizeof out, &len), ENVELOPE_MALFORMED);
    assert_int_equal(envelope_open(e, "enc:v1::AAAA", AAD_A, out, sizeof out, &len), ENVELOPE_MALFORMED);
    assert_int_equal(envelope_open(e, GROUP_KEY, AAD_A, out, sizeof out, &len), ENVELOPE_NOT_SEALED);
    /* the KEK id in the header is authenticated: renaming it breaks the unwrap */
    {
        struct envelope *two = ring("{\"current\":\"k1\",\"keys\":{\"k1\":\"" K1 "\",\"kx\":\"" K1 "\"}}");
        char *t = xasprintf("enc:v1:kx:%s", s + pre);
        assert_int_equal(envelope_open(two, t, AAD_A, out, sizeof out, &len), ENVELOPE_AUTH_FAILED);
        free(t);
        envelope_free(two);
    }
    free(s);
    envelope_free(e);
}

static void test_clear_values(void **state)
{
    struct envelope *e = ring_k1();
    unsigned char out[64], raw[64];
    size_t len;
    char *s = NULL;
    (void)state;
    /* rows written before encryption: a plain base64 key still reads */
    assert_true(envelope_open_b64key(e, GROUP_KEY, AAD_A, out, sizeof out, &len));
    assert_int_equal(sas_b64_decode(GROUP_KEY, raw, sizeof raw), 32);
    assert_memory_equal(out, raw, 32);
    assert_false(envelope_open_b64key(e, "not base64!", AAD_A, out, sizeof out, &len));
    assert_false(envelope_open_b64key(e, NULL, AAD_A, out, sizeof out, &len));
    /* a sealed text that is not base64 is refused by the b64key reader */
    s = envelope_seal_text(e, "not base64!", AAD_A);
    assert_false(envelope_open_b64key(e, s, AAD_A, out, sizeof out, &len));
    free(s);
    /* and the pass seals them */
    assert_int_equal(envelope_rewrap(e, GROUP_KEY, AAD_A, &s), ENVELOPE_OK);
    assert_non_null(s);
    assert_true(envelope_is_current(e, s));
    assert_true(envelope_open_b64key(e, s, AAD_A, out, sizeof out, &len));
    assert_memory_equal(out, raw, 32);
    free(s);
    envelope_free(e);
}

static void test_rewrap(void **state)
{
    struct envelope *old = ring_k1();
    struct envelope *both = ring("{\"current\":\"k2\",\"keys\":{\"k1\":\"" K1 "\",\"k2\":\"" K2 "\"}}");
    struct envelope *only2 = ring("{\"current\":\"k2\",\"keys\":{\"k2\":\"" K2 "\"}}");
    char *s = envelope_seal_text(old, GROUP_KEY, AAD_A), *t = NULL, *u = NULL;
    char text[100], id[40];
    size_t pre = strlen("enc:v1:k1:");
    (void)state;
    /* the new current KEK opens nothing of k1's until re-wrapped */
    assert_int_equal(envelope_open_text(only2, s, AAD_A, text, sizeof text), ENVELOPE_UNKNOWN_KEK);
    assert_int_equal(envelope_open_text(both, s, AAD_A, text, sizeof text), ENVELOPE_OK);
    assert_false(envelope_is_current(both, s));
    /* a wrong AAD is caught before anything is re-wrapped */
    assert_int_equal(envelope_rewrap(both, s, AAD_B, &t), ENVELOPE_AUTH_FAILED);
    assert_null(t);
    assert_int_equal(envelope_rewrap(both, s, AAD_A, &t), ENVELOPE_OK);
    assert_non_null(t);
    assert_true(envelope_kek_id_of(t, id, sizeof id));
    assert_string_equal(id, "k2");
    /* only the DEK wrap changed: the data part (after the 60-byte wrap) is the same */
    {
        unsigned char b1[400], b2[400];
        int n1 = sas_b64_decode(s + pre, b1, sizeof b1), n2 = sas_b64_decode(t + pre, b2, sizeof b2);
        assert_int_equal(n1, n2);
        assert_memory_equal(b1 + 60, b2 + 60, (size_t)n1 - 60);
        assert_memory_not_equal(b1, b2, 60);
    }
    assert_int_equal(envelope_open_text(only2, t, AAD_A, text, sizeof text), ENVELOPE_OK);
    assert_string_equal(text, GROUP_KEY);
    /* already current: nothing to do */
    assert_int_equal(envelope_rewrap(both, t, AAD_A, &u), ENVELOPE_OK);
    assert_null(u);
    /* a value under a KEK nobody holds is reported, not re-wrapped */
    assert_int_equal(envelope_rewrap(only2, s, AAD_A, &u), ENVELOPE_UNKNOWN_KEK);
    assert_null(u);
    free(s);
    free(t);
    envelope_free(old);
    envelope_free(both);
    envelope_free(only2);
}

static void test_aads(void **state)
{
    char a[ENVELOPE_AAD_MAX];
    (void)state;
    envelope_aad_enrollment_key(a, sizeof a, "acme");
    assert_string_equal(a, "tenant:acme:enrollment-key");
    envelope_aad_service_key(a, sizeof a, "eu-west-1-dps");
    assert_string_equal(a, "dps-instance:eu-west-1-dps:service-key");
    envelope_aad_stamp_key(a, sizeof a, "eu-west-1-dps", "group", "acme");
    assert_string_equal(a, "stamp:eu-west-1-dps:group:acme:symmetric-key");
}

static void expect_bad_text(const char *json, const char *needle)
{
    char err[300] = "";
    struct envelope *e = envelope_from_text(json, err, sizeof err);
    if (e)
        fail_msg("accepted: %s", json);
    if (!strstr(err, needle))
        fail_msg("error '%s' does not say '%s'", err, needle);
    /* never echo key material */
    assert_null(strstr(err, K1));
}

static void test_file_format(void **state)
{
    (void)state;
    expect_bad_text("[]", "not a JSON object");
    expect_bad_text("{\"keys\":{\"k1\":\"" K1 "\"}}", "current");
    expect_bad_text("{\"current\":\"k1\"}", "keys");
    expect_bad_text("{\"current\":\"k1\",\"keys\":{}}", "keys");
    expect_bad_text("{\"current\":\"k2\",\"keys\":{\"k1\":\"" K1 "\"}}", "not in 'keys'");
    expect_bad_text("{\"current\":\"k1\",\"keys\":{\"k1\":\"" K3 "\"}}", "exactly 32 bytes");
    expect_bad_text("{\"current\":\"k1\",\"keys\":{\"k1\":\"short\"}}", "exactly 32 bytes");
    expect_bad_text("{\"current\":\"k 1\",\"keys\":{\"k 1\":\"" K1 "\"}}", "KEK id");
    expect_bad_text("{\"current\":\"k1\",\"keys\":{\"k1\":\"" K1 "\"},\"extra\":1}", "unknown member");
    expect_bad_text("{\"current\":\"k1\",\"keys\":{\"k1\":\"" K1 "\",\"k1\":\"" K2 "\"}}", "JSON");
}

static const char *write_kek(const char *dir, const char *name, const char *text, mode_t mode)
{
    static char path[512];
    int fd;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(chmod(path, mode), 0);
    return path;
}

static void test_file_permissions(void **state)
{
    char dir[] = "/tmp/test_envelope_XXXXXX";
    char err[400];
    char *text = envelope_new_file_text("first");
    struct envelope *e;
    const char *p;
    (void)state;
    assert_non_null(mkdtemp(dir));
    assert_non_null(text);
    /* 0600 and 0400 load */
    p = write_kek(dir, "ok", text, 0600);
    e = envelope_load(p, err, sizeof err);
    if (!e)
        fail_msg("0600 refused: %s", err);
    assert_string_equal(envelope_current_id(e), "first");
    assert_int_equal(envelope_kek_count(e), 1);
    envelope_free(e);
    p = write_kek(dir, "ro", text, 0400);
    e = envelope_load(p, err, sizeof err);
    assert_non_null(e);
    envelope_free(e);
    /* world- or group-accessible files are refused, naming the mode */
    {
        static const mode_t bad[] = {0644, 0604, 0640, 0660, 0606, 0601};
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            p = write_kek(dir, "bad", text, bad[i]);
            e = envelope_load(p, err, sizeof err);
            if (e)
                fail_msg("mode %04o accepted", (unsigned)bad[i]);
            assert_non_null(strstr(err, "group and others"));
        }
    }
    /* missing file, a directory */
    assert_null(envelope_load("/nonexistent/kek.json", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/kek.json"));
    assert_null(envelope_load(dir, err, sizeof err));
    /* reload: a new current key is taken, a broken file keeps the old keys */
    {
        char *two;
        char *sealed;
        unsigned char out[64];
        size_t len;
        bool changed = false;
        p = write_kek(dir, "rot", text, 0600);
        e = envelope_load(p, err, sizeof err);
        assert_non_null(e);
        sealed = envelope_seal_text(e, GROUP_KEY, AAD_A);
        assert_true(envelope_reload_if_changed(e, &changed, err, sizeof err));
        assert_false(changed);
        /* add a key and make it current (what stampcp-kek add does) */
        {
            json_t *j = json_loads(text, 0, NULL);
            json_object_set_new(json_object_get(j, "keys"), "second", json_string(K2));
            json_object_set_new(j, "current", json_string("second"));
            two = json_dumps(j, 0);
            json_decref(j);
        }
        sleep(0);
        write_kek(dir, "rot", two, 0600);
        assert_true(envelope_reload(e, &changed, err, sizeof err));
        assert_true(changed);
        assert_string_equal(envelope_current_id(e), "second");
        assert_true(envelope_open_b64key(e, sealed, AAD_A, out, sizeof out, &len));
        write_kek(dir, "rot", "{broken", 0600);
        assert_false(envelope_reload(e, &changed, err, sizeof err));
        assert_string_equal(envelope_current_id(e), "second");
        assert_true(envelope_open_b64key(e, sealed, AAD_A, out, sizeof out, &len));
        write_kek(dir, "rot", two, 0644);
        assert_false(envelope_reload(e, &changed, err, sizeof err));
        assert_non_null(strstr(err, "0644"));
        free(two);
        free(sealed);
        envelope_free(e);
        unlink(p);
    }
    /* an unknown id re-reads the file on first use */
    {
        struct envelope *reader, *writer;
        char *sealed;
        unsigned char out[64];
        size_t len;
        p = write_kek(dir, "lazy", text, 0600);
        reader = envelope_load(p, err, sizeof err);
        assert_non_null(reader);
        writer = ring("{\"current\":\"third\",\"keys\":{\"third\":\"" K2 "\"}}");
        sealed = envelope_seal_text(writer, GROUP_KEY, AAD_A);
        assert_false(envelope_open_b64key(reader, sealed, AAD_A, out, sizeof out, &len));
        write_kek(dir, "lazy", "{\"current\":\"third\",\"keys\":{\"third\":\"" K2 "\"}}", 0600);
        usleep((ENVELOPE_RELOAD_MIN_MS + 50) * 1000);
        assert_true(envelope_open_b64key(reader, sealed, AAD_A, out, sizeof out, &len));
        assert_string_equal(envelope_current_id(reader), "third");
        free(sealed);
        envelope_free(reader);
        envelope_free(writer);
    }
    unlink(write_kek(dir, "ok", "", 0600));
    unlink(write_kek(dir, "ro", "", 0600));
    unlink(write_kek(dir, "bad", "", 0600));
    unlink(write_kek(dir, "lazy", "", 0600));
    rmdir(dir);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_wrong_aad_and_kek),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_clear_values),
        cmocka_unit_test(test_rewrap),
        cmocka_unit_test(test_aads),
        cmocka_unit_test(test_file_format),
        cmocka_unit_test(test_file_permissions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
