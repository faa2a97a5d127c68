/*
 * fs_report.c - fleetsim: the results, as a table for people and as one
 * JSON object (--json) for scripts. Owns nothing but the formatting and the
 * peak RSS reading (VmHWM).
 */
#include "fs.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

long fs_peak_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    if (f) {
        while (fgets(line, sizeof line, f))
            if (strncmp(line, "VmHWM:", 6) == 0)
                kb = strtol(line + 6, NULL, 10);
        fclose(f);
    }
    if (kb < 0) {
        struct rusage ru;
        if (getrusage(RUSAGE_SELF, &ru) == 0)
            kb = ru.ru_maxrss;
    }
    return kb;
}

static const char *const kind_json[SD_REQ_KIND_COUNT] = {
    "lookups", "locates", "provisions", "reprovisions", "dpsRegistrations", "dpsPolls", "dpsLookups",
};

static double per_s(uint64_t n, double s)
{
    return s > 0 ? (double)n / s : 0;
}

/* About ten evenly spaced (second, ready) points, the last one included. */
static json_t *ready_over_time(const struct fs_result *r)
{
    json_t *a = json_array();
    uint32_t n = r->samples_n, step = n > 10 ? (n + 9) / 10 : 1;
    for (uint32_t k = 0; k < n; k += step)
        json_array_append_new(a, json_pack("{s:I, s:I}", "s", (json_int_t)(k + 1), "ready",
                                           (json_int_t)r->sample_ready[k]));
    json_array_append_new(a, json_pack("{s:f, s:I}", "s", r->seconds, "ready", (json_int_t)r->ready));
    return a;
}

static json_t *result_json(const struct fs_result *r)
{
    json_t *req = json_object();
    for (int k = 0; k < SD_REQ_KIND_COUNT; k++)
        json_object_set_new(req, kind_json[k], json_integer((json_int_t)r->requests[k]));
    json_object_set_new(req, "total", json_integer((json_int_t)r->requests_total));
    json_t *o = json_pack(
        "{s:I, s:I, s:I, s:I, s:f, s:o, s:f, s:I, s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I}, s:{s:s, s:I, s:I, "
        "s:I, s:I}, s:o, s:I, s:{s:I, s:I, s:I, s:I, s:I}}",
        "devices", (json_int_t)r->devices, "ready", (json_int_t)r->ready, "failed",
        (json_int_t)(r->failed + r->unfinished), "unfinished", (json_int_t)r->unfinished, "seconds", r->seconds,
        "requests", req, "requestsPerSecond", per_s(r->requests_total, r->seconds), "throttled",
        (json_int_t)r->throttled, "wrongAnswers", (json_int_t)r->wrong, "reprovisions",
        (json_int_t)r->reprovisions, "pollLimitViolations", (json_int_t)r->poll_violations, "ioErrors",
        (json_int_t)r->io_errors, "answers", "2xx", (json_int_t)r->status_2xx, "4xx", (json_int_t)r->status_4xx,
        "5xx", (json_int_t)r->status_5xx, "timeToReadyMs", "from", r->ttr_from_first ? "firstRequest" : "boot",
        "p50", (json_int_t)r->ttr_p50, "p90", (json_int_t)r->ttr_p90, "p99", (json_int_t)r->ttr_p99, "max",
        (json_int_t)r->ttr_max, "readyOverTime", ready_over_time(r), "peakConnections",
        (json_int_t)r->ev.peak_conns, "connections", "opened", (json_int_t)r->ev.conns_opened, "failed",
        (json_int_t)r->ev.conn_failures, "reusedRequests", (json_int_t)r->ev.reused, "resends",
        (json_int_t)r->ev.retries, "timeouts", (json_int_t)r->ev.timeouts);
    if (o)
        json_object_set_new(o, "retryAfterViolations", json_integer((json_int_t)r->retry_after_violations));
    return o;
}

void fs_report_json(const struct fs_report *rep)
{
    json_t *o = result_json(rep->run);
    if (!o) {
        fprintf(stderr, "fleetsim: cannot build the JSON report\n");
        return;
    }
    json_t *params = json_pack("{s:s, s:I, s:s, s:s, s:I, s:I, s:I}", "scenario", rep->scenario, "devices",
                               (json_int_t)rep->devices, "tenant", rep->tenant, "approach", rep->approach,
                               "windowMs", (json_int_t)rep->window_ms, "maxConnsPerEndpoint",
                               (json_int_t)rep->max_conns, "seed", (json_int_t)rep->seed);
    if (rep->seed_desc)
        json_object_set_new(params, "seedMode", json_string(rep->seed_desc));
    if (rep->failed_region) {
        json_object_set_new(params, "failedRegion", json_string(rep->failed_region));
        json_object_set_new(o, "affected", json_integer(rep->affected));
    }
    json_object_set_new(o, "scenario", json_string(rep->scenario));
    json_object_set_new(o, "parameters", params);
    json_object_set_new(o, "peakRssKb", json_integer(rep->peak_rss_kb));
    json_object_set_new(o, "bytesPerDevice", json_integer((json_int_t)rep->bytes_per_device));
    if (rep->seeding) {
        json_t *seeding = result_json(rep->seeding);
        if (seeding && rep->seed_mode)
            json_object_set_new(seeding, "mode", json_string(rep->seed_mode));
        json_object_set_new(o, "seeding", seeding);
    }
    char *text = json_dumps(o, JSON_COMPACT);
    if (text)
        printf("%s\n", text);
    free(text);
    json_decref(o);
}

static void table_result(const char *title, const struct fs_result *r)
{
    printf("%s\n", title);
    printf("  devices %-10u ready %-10u failed %-6u (unfinished %u)  %.1f s\n", r->devices, r->ready,
           r->failed + r->unfinished, r->unfinished, r->seconds);
    printf("  requests %" PRIu64 " (%.0f/s):", r->requests_total, per_s(r->requests_total, r->seconds));
    for (int k = 0; k < SD_REQ_KIND_COUNT; k++)
        if (r->requests[k])
            printf(" %s %" PRIu64, kind_json[k], r->requests[k]);
    printf("\n  answers 2xx %" PRIu64 " 4xx %" PRIu64 " 5xx %" PRIu64 ", throttled (429) %" PRIu64
           ", I/O errors %" PRIu64 "\n",
           r->status_2xx, r->status_4xx, r->status_5xx, r->throttled, r->io_errors);
    printf("  wrong answers %u, reprovisions %u, poll-limit violations %u, Retry-After violations %u\n", r->wrong,
           r->reprovisions, r->poll_violations, r->retry_after_violations);
    printf("  time to ready (from %s) ms: p50 %u p90 %u p99 %u max %u\n",
           r->ttr_from_first ? "first request" : "boot", r->ttr_p50, r->ttr_p90, r->ttr_p99, r->ttr_max);
    printf("  connections: peak %u, opened %" PRIu64 ", failed %" PRIu64 ", resends %" PRIu64
           ", timeouts %" PRIu64 "\n",
           r->ev.peak_conns, r->ev.conns_opened, r->ev.conn_failures, r->ev.retries, r->ev.timeouts);
    printf("  ready over time:");
    uint32_t step = r->samples_n > 10 ? (r->samples_n + 9) / 10 : 1;
    for (uint32_t k = 0; k < r->samples_n; k += step)
        printf(" %us:%u", k + 1, r->sample_ready[k]);
    printf(" %.1fs:%u\n", r->seconds, r->ready);
}

void fs_report_table(const struct fs_report *rep)
{
    printf("fleetsim: scenario %s, %u devices, tenant %s, approach %s, window %u ms, max %u connections per "
           "endpoint, seed %" PRIu64 "%s%s\n",
           rep->scenario, rep->devices, rep->tenant, rep->approach, rep->window_ms, rep->max_conns, rep->seed,
           rep->seed_desc ? ", seeding " : "", rep->seed_desc ? rep->seed_desc : "");
    if (rep->failed_region)
        printf("failed region %s: %u devices affected\n", rep->failed_region, rep->affected);
    if (rep->seeding) {
        char title[64];
        snprintf(title, sizeof title, "seeding (%s, not measured):", rep->seed_mode ? rep->seed_mode : "?");
        table_result(title, rep->seeding);
    }
    table_result("measured:", rep->run);
    printf("peak RSS %ld kB; %zu bytes per device (machine + simulator + driver)\n", rep->peak_rss_kb,
           rep->bytes_per_device);
}
