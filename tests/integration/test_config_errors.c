/*
 * test_config_errors - bad configuration makes both daemons exit with status
 * 2 at once, and stderr names the problem (the key, or the file).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "ts.h"

static int seq;

/* Run bin --config path; expect exit 2 within 5 s and `needle` on stderr. */
static void expect_config_error(const char *bin, const char *config_text, const char *needle)
{
    const char *path = ts_str("%s/%s-bad-%d.json", ts_tmp(), bin, seq);
    const char *out = ts_str("%s/%s-bad-%d.out", ts_tmp(), bin, seq);
    const char *err = ts_str("%s/%s-bad-%d.err", ts_tmp(), bin, seq);
    struct ts_proc *p;
    seq++;
    if (config_text)
        ts_write_file(path, config_text);
    char *argv[] = { (char *)ts_bin(bin), "--config", (char *)path, NULL };
    p = ts_proc_spawn(ts_str("%s-bad-%d", bin, seq), argv, out, err);
    if (!ts_proc_wait(p, 5000)) {
        ts_proc_kill(p, 9);
        ts_fail("%s with a bad config (%s) still running after 5 s", bin, needle);
    }
    if (ts_proc_exit_code(p) != 2) {
        ts_proc_dump_log(p, 2000);
        ts_fail("%s with a bad config (%s): expected exit 2, got exit %d signal %d", bin, needle,
                ts_proc_exit_code(p), ts_proc_term_signal(p));
    }
    if (!ts_file_contains(err, needle)) {
        ts_proc_dump_log(p, 2000);
        ts_fail("%s with a bad config: stderr does not mention \"%s\"", bin, needle);
    }
    ts_log("%s: exit 2, stderr names \"%s\"", bin, needle);
}

/* A complete, valid controlplane config with `extra` spliced in and `drop` left out. */
static const char *cp_config(const char *drop, const char *extra)
{
    struct { const char *key, *val; } f[] = {
        { "listen", "\"127.0.0.1:1\"" },
        { "operatorToken", "\"0123456789abcdef0123456789abcdef\"" },
        { "globalDatabase", "\"host=127.0.0.1 port=1 user=postgres dbname=nope\"" },
        { "geographies", "{\"eu\":\"host=127.0.0.1 port=1 user=postgres dbname=nope_eu\"}" },
        { "redis", "\"127.0.0.1:1\"" },
        { "logLevel", "\"info\"" },
        { "staleAfterIntervals", "3" },
        { "downAfterIntervals", "10" },
        { "maxBodyBytes", "65536" },
        { "plainHttp", "true" },
    };
    char *s = ts_str("{");
    bool first = true;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (drop && strcmp(drop, f[i].key) == 0)
            continue;
        s = ts_str("%s%s\"%s\":%s", s, first ? "" : ",", f[i].key, f[i].val);
        first = false;
    }
    if (extra)
        s = ts_str("%s,%s", s, extra);
    return ts_str("%s}\n", s);
}

static void test_controlplane(void **state)
{
    expect_config_error("controlplane", cp_config(NULL, "\"colour\":\"blue\""), "colour");
    expect_config_error("controlplane", cp_config("globalDatabase", NULL), "globalDatabase");
    expect_config_error("controlplane", cp_config("staleAfterIntervals", "\"staleAfterIntervals\":\"3\""),
                        "staleAfterIntervals");
    expect_config_error("controlplane", cp_config("maxBodyBytes", "\"maxBodyBytes\":true"), "maxBodyBytes");
    expect_config_error("controlplane", cp_config("listen", "\"listen\":\"nonsense\""), "listen");
    expect_config_error("controlplane", cp_config("listen", "\"listen\":\"127.0.0.1:99999\""), "listen");
    expect_config_error("controlplane", cp_config("geographies", "\"geographies\":{\"eu\":5}"), "eu");
    expect_config_error("controlplane", cp_config("logLevel", "\"logLevel\":\"chatty\""), "logLevel");
    /* no transport said: neither tls nor plainHttp is a config error, not plain HTTP */
    expect_config_error("controlplane", cp_config("plainHttp", NULL), "tls.cert and tls.key are required");
    /* a certificate that does not load: exit 2 naming the file */
    expect_config_error("controlplane",
                        cp_config("plainHttp", ts_str("\"tls\":{\"cert\":\"%s/none.crt\",\"key\":\"%s/none.key\"}",
                                                      ts_tmp(), ts_tmp())),
                        "none.crt");
    /* secrets at rest: no KEK file is a config error (there is no plaintext mode), and so is
     * a KEK file group or others may read, or one that is not a KEK file */
    expect_config_error("controlplane", cp_config(NULL, NULL), "kekFile is required");
    {
        const char *kek = ts_str("%s/kek-0644.json", ts_tmp());
        ts_write_file(kek, ts_read_file(ts_kek_file(), NULL));
        assert_int_equal(chmod(kek, 0644), 0);
        expect_config_error("controlplane", cp_config(NULL, ts_str("\"kekFile\":\"%s\"", kek)), "mode 0644");
        assert_int_equal(chmod(kek, 0600), 0);
        ts_write_file(kek, "{\"current\":\"a\",\"keys\":{\"a\":\"c2hvcnQ=\"}}");
        expect_config_error("controlplane", cp_config(NULL, ts_str("\"kekFile\":\"%s\"", kek)), "32 bytes");
        expect_config_error("controlplane", cp_config(NULL, ts_str("\"kekFile\":\"%s/none.json\"", ts_tmp())),
                            "none.json");
    }
    /* missing file: the message names the file */
    expect_config_error("controlplane", NULL, ts_str("controlplane-bad-%d.json", seq));
    /* malformed JSON: the message names the file */
    expect_config_error("controlplane", "{\"listen\": \"127.0.0.1:1\",,}", ts_str("controlplane-bad-%d.json", seq));
    expect_config_error("controlplane", "[1,2]", ts_str("controlplane-bad-%d.json", seq));
}

static const char *agent_config(const char *drop, const char *extra)
{
    struct { const char *key, *val; } f[] = {
        { "stampId", "\"eu-west-1\"" },
        { "region", "\"eu-west\"" },
        { "redis", "\"127.0.0.1:1\"" },
        { "reportIntervalMs", "200" },
        { "dpsInstances", "[\"eu-west-1-dps\"]" },
        { "hubs", "[\"eu-west-1-hub1\"]" },
    };
    char *s = ts_str("{");
    bool first = true;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (drop && strcmp(drop, f[i].key) == 0)
            continue;
        s = ts_str("%s%s\"%s\":%s", s, first ? "" : ",", f[i].key, f[i].val);
        first = false;
    }
    if (extra)
        s = ts_str("%s,%s", s, extra);
    return ts_str("%s}\n", s);
}

static void test_agent(void **state)
{
    expect_config_error("stamp-agent", agent_config(NULL, "\"colour\":\"blue\""), "colour");
    expect_config_error("stamp-agent", agent_config("stampId", NULL), "stampId");
    expect_config_error("stamp-agent", agent_config("reportIntervalMs", "\"reportIntervalMs\":\"fast\""),
                        "reportIntervalMs");
    expect_config_error("stamp-agent", NULL, ts_str("stamp-agent-bad-%d.json", seq));
    /* with a provisioning section the enrollment keys are sealed: kekFile is required */
    {
        const char *prov = ts_str("{\"stampId\":\"eu-west-1\",\"region\":\"eu-west\",\"redis\":\"127.0.0.1:1\","
                                  "\"provisioning\":{\"listen\":\"127.0.0.1:1\",\"database\":\"host=127.0.0.1 port=1\","
                                  "\"tls\":{\"cert\":\"%s/none.crt\",\"key\":\"%s/none.key\"},"
                                  "\"servicePolicies\":[{\"name\":\"p\",\"key\":\"AAAAAAAAAAAAAAAAAAAAAA==\"}],"
                                  "\"instances\":[{\"id\":\"d1\",\"idScope\":\"0ne1\"}],"
                                  "\"hubs\":[{\"id\":\"h1\",\"hostName\":\"h1.test\"}]}",
                                  ts_tmp(), ts_tmp());
        const char *kek = ts_str("%s/agent-kek-0604.json", ts_tmp());
        expect_config_error("stamp-agent", ts_str("%s}\n", prov), "kekFile is required");
        ts_write_file(kek, ts_read_file(ts_kek_file(), NULL));
        assert_int_equal(chmod(kek, 0604), 0);
        expect_config_error("stamp-agent", ts_str("%s,\"kekFile\":\"%s\"}\n", prov, kek), "mode 0604");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_controlplane),
        cmocka_unit_test(test_agent),
    };
    ts_init("test_config_errors");
    return ts_finish(cmocka_run_group_tests(tests, NULL, NULL));
}
