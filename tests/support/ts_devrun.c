/*
 * ts_devrun.c - run sd-provision-one from a test and read its output
 * (ts_devrun.h).
 */
#include "ts_devrun.h"

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "ts.h"
#include "ts_stamp.h"

int ts_count_lines(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

json_t *ts_last_json(const char *out)
{
    json_t *last = NULL;
    char *copy = ts_str("%s", out ? out : "");
    for (char *save = NULL, *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_t *j;
        if (*l == '{' && (j = json_loads(l, 0, NULL)) != NULL)
            last = ts_jkeep(j);
    }
    return last;
}

void ts_expect_no_sanitizer_report(const char *what, const char *out)
{
    if (out && (strstr(out, "Sanitizer") || strstr(out, "runtime error:")))
        ts_fail("%s: a sanitizer report: %s", what, out);
}

json_t *ts_sd_run_until_stopped(const char *name, char **argv, int min_ms, int min_count, const char **log_text)
{
    const char *log = ts_str("%s/%s.log", ts_tmp(), name);
    int64_t start = ts_now_ms();
    struct ts_proc *p = ts_proc_spawn(name, argv, log, NULL);
    json_t *j;

    for (;;) {
        const char *t = ts_read_file(log, NULL);
        int64_t waited = ts_now_ms() - start;
        if (!ts_proc_alive(p)) {
            ts_proc_dump_log(p, 6000);
            ts_fail("%s exited (code %d) instead of retrying", name, ts_proc_exit_code(p));
        }
        if ((waited >= min_ms && t && ts_count_lines(t, "-> 401") >= min_count) || waited >= 20000)
            break;
        ts_sleep_ms(50);
    }
    ts_proc_kill(p, SIGTERM);
    if (!ts_proc_wait(p, 3000))
        ts_fail("%s did not stop within 3 s of SIGTERM", name);
    assert_int_equal(ts_proc_exit_code(p), 1);
    *log_text = ts_read_file(log, NULL);
    assert_non_null(*log_text);
    ts_log("%s (stopped after %lld ms):\n%s", name, (long long)(ts_now_ms() - start), *log_text);
    ts_expect_no_sanitizer_report(name, *log_text);
    j = ts_last_json(*log_text);
    assert_non_null(j);
    TS_EXPECT_STREQ(ts_jstr(j, "status"), "failed");
    return j;
}

const char *ts_sd_state_path(const char *regid)
{
    return ts_str("%s/%s.state", ts_tmp(), regid);
}

struct ts_sd_run ts_sd_run(char **argv, const char *regid, bool check_sanitizer)
{
    char *out = NULL;
    struct ts_sd_run r;

    r.rc = ts_run(argv, 90000, &out);
    r.out = out ? out : "";
    r.json = ts_last_json(r.out);
    ts_log("sd-provision-one %s: exit %d\n%s", regid, r.rc, r.out);
    if (check_sanitizer)
        ts_expect_no_sanitizer_report(regid, r.out);
    if (!r.json)
        ts_fail("sd-provision-one %s printed no JSON line (exit %d)", regid, r.rc);
    return r;
}

json_int_t ts_sd_requests(const struct ts_sd_run *r, const char *kind)
{
    return ts_jint(json_object_get(r->json, "requests"), kind, -1);
}

bool ts_rt_stamp_has_hub(const struct ts_rt_stamp *s, const char *host)
{
    for (int h = 0; host && h < 4 && s->hubs[h].id; h++)
        if (strcmp(host, ts_str("%s.hub.test", s->hubs[h].id)) == 0)
            return true;
    return false;
}
