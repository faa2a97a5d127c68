/*
 * fuzz_sd_store.c - libFuzzer harness: the device's state-file loader
 * (device/sd_store.c): sd_store_load on the bytes as a file, and
 * sd_store_parse on them directly.
 *
 * Input: one mode byte, then the file. Mode bit 0 set: the harness appends
 * a correct "crc32=XXXXXXXX\n" line, so mutations reach the key=value parser
 * instead of dying at the checksum. A state that parses must format again
 * and read back identically (the file the device writes is the one it reads).
 */
#include <string.h>

#include "fuzz_util.h"
#include "sd_store.h"

static uint32_t crc32_ieee(const uint8_t *buf, size_t len)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < len; i++) {
        c ^= buf[i];
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xffffffffu;
}

static bool same(const struct sd_state *a, const struct sd_state *b)
{
    return a->flags == b->flags && !strcmp(a->registration_id, b->registration_id) &&
           !strcmp(a->tenant_id, b->tenant_id) && !strcmp(a->geography, b->geography) &&
           !strcmp(a->region, b->region) && !strcmp(a->stamp, b->stamp) && !strcmp(a->id_scope, b->id_scope) &&
           !strcmp(a->dps_endpoint, b->dps_endpoint) && !strcmp(a->assigned_hub, b->assigned_hub) &&
           !strcmp(a->device_id, b->device_id) && !strcmp(a->etag, b->etag);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sd_state s1, s2, s3;
    enum sd_store_result r1, r2;
    char path[64], err[256], out[16384];
    uint8_t *buf;
    size_t len;
    int fd, n;

    if (size < 1)
        return 0;
    len = size - 1;
    buf = malloc(len + 16);
    if (!buf)
        abort();
    memcpy(buf, data + 1, len);
    if (data[0] & 1) {
        char line[16];
        snprintf(line, sizeof line, "crc32=%08X\n", (unsigned)crc32_ieee(buf, len));
        memcpy(buf + len, line, 15);
        len += 15;
    }
    memset(&s1, 0, sizeof s1);
    memset(&s2, 0, sizeof s2);
    r1 = sd_store_parse((const char *)buf, len, &s1);
    fd = fuzz_file(buf, len, path, sizeof path);
    if (fd >= 0) {
        r2 = sd_store_load(path, &s2, err, sizeof err);
        close(fd);
        /* the loader answers what the parser does (it reads the same bytes) */
        if (r2 != r1 || (r1 == SD_STORE_OK && !same(&s1, &s2)))
            abort();
    }
    if (r1 == SD_STORE_OK) {
        n = sd_store_format(&s1, out, sizeof out);
        if (n <= 0)
            abort();
        memset(&s3, 0, sizeof s3);
        if (sd_store_parse(out, (size_t)n, &s3) != SD_STORE_OK || !same(&s1, &s3))
            abort();
    } else if (r1 != SD_STORE_CORRUPT) {
        abort();
    }
    free(buf);
    return 0;
}
