/*
 * fuzz_load_report.c - libFuzzer harness: the load reports stamps publish on
 * Redis (controlplane/redisfeed.c feed_on_message: json_loadb of the message,
 * then controlplane/loadtable.c loadtable_apply), a fresh load table per
 * input so nothing carries over between inputs.
 *
 * Input: newline-separated messages, applied in order (so newer/older
 * reports of the same stamp and many stamps are exercised), then every
 * stamp's health is read back at a few clock values.
 */
#include <jansson.h>
#include <string.h>

#include "fuzz_util.h"
#include "loadtable.h"

#define NOW_WALL 1700000000000LL
#define NOW_MONO 5000000LL

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct loadtable *lt = loadtable_new(3, 10);
    size_t off = 0;

    if (!lt)
        abort();
    while (off < size) {
        const uint8_t *nl = memchr(data + off, '\n', size - off);
        size_t len = nl ? (size_t)(nl - (data + off)) : size - off;
        json_t *report = json_loadb((const char *)data + off, len, 0, NULL);
        bool ok = loadtable_apply(lt, report, NOW_WALL, NOW_MONO);
        const char *id = json_string_value(json_object_get(report, "stampId"));
        if (ok && id) {
            const struct load_entry *e = loadtable_get(lt, id);
            if (!e || strcmp(e->stamp_id, id) != 0 || e->interval_ms < 1)
                abort();
            for (int64_t t = 0; t <= 2 * NOW_MONO; t += NOW_MONO / 2)
                (void)loadtable_health_word(loadtable_health(lt, id, t));
            (void)loadtable_health(lt, id, INT64_MAX / 4);
        }
        json_decref(report);
        off += len + 1;
    }
    loadtable_free(lt);
    return 0;
}
