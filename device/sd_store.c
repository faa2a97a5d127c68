/*
 * sd_store.c - libstampdevice: the device state file (sd_store.h).
 *
 * Owns the on-disk format and the atomic replace. The file is text:
 *
 *   stampdevice-state 1
 *   flags=3
 *   registration_id=dev-1
 *   ... one key=value line for every field of struct sd_state ...
 *   crc32=1A2B3C4D
 *
 * Values are printable ASCII (0x20-0x7e), so no escaping is needed and a
 * stray newline or NUL can only mean corruption. The CRC-32 (IEEE, as zlib)
 * covers every byte before the "crc32=" line; with "every key exactly once"
 * and the size limit it makes a truncated, torn or bit-flipped file
 * recognisable. The parser trusts nothing: any deviation is CORRUPT.
 */
#include "sd_store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SD_STORE_HEADER "stampdevice-state 1\n"
#define SD_STORE_MAX_FILE 8192
#define SD_STORE_PATH_MAX 4096

/* Every field of struct sd_state except flags, in file order. */
struct sd_store_field {
    const char *key;
    size_t off;
    size_t size; /* of the char array, NUL included */
};

#define SD_FIELD(name) { #name, offsetof(struct sd_state, name), sizeof(((struct sd_state *)0)->name) }
static const struct sd_store_field sd_store_fields[] = {
    SD_FIELD(registration_id), SD_FIELD(tenant_id), SD_FIELD(geography),    SD_FIELD(region),
    SD_FIELD(stamp),           SD_FIELD(id_scope),  SD_FIELD(dps_endpoint), SD_FIELD(assigned_hub),
    SD_FIELD(device_id),       SD_FIELD(etag),
};
#undef SD_FIELD
#define SD_STORE_NFIELDS (sizeof sd_store_fields / sizeof sd_store_fields[0])

static const uint32_t sd_store_known_flags = SD_STATE_ASSIGNED | SD_STATE_HUB | SD_STATE_RETIRED;

/* ------------------------------------------------------------------ */
/* CRC-32 (IEEE 802.3, reflected, as zlib's crc32())                   */
/* ------------------------------------------------------------------ */

/* Bitwise rather than table-driven: a state file is under 1 KiB, and no
 * shared table means no initialisation race between driver threads. */
static uint32_t sd_store_crc32(const char *buf, size_t len)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < len; i++) {
        c ^= (unsigned char)buf[i];
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    }
    return c ^ 0xffffffffu;
}

static void sd_store_seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void sd_store_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ */
/* Format                                                             */
/* ------------------------------------------------------------------ */

static bool sd_store_printable(char c)
{
    return c >= 0x20 && c <= 0x7e;
}

/* The value of a field, or NULL when it is not a NUL-terminated printable string. */
static const char *sd_store_value(const struct sd_state *s, const struct sd_store_field *f)
{
    const char *v = (const char *)s + f->off;
    size_t n = strnlen(v, f->size);
    if (n == f->size)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (!sd_store_printable(v[i]))
            return NULL;
    return v;
}

/* Append to buf at *pos; false when it does not fit. */
static bool sd_store_append(char *buf, size_t buflen, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool sd_store_append(char *buf, size_t buflen, size_t *pos, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (*pos >= buflen)
        return false;
    va_start(ap, fmt);
    n = vsnprintf(buf + *pos, buflen - *pos, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= buflen - *pos)
        return false;
    *pos += (size_t)n;
    return true;
}

int sd_store_format(const struct sd_state *s, char *buf, size_t buflen)
{
    size_t pos = 0;

    /* Refuse what parse would refuse: the file must read back as written. */
    if ((s->flags & ~sd_store_known_flags) != 0)
        return -1;
    if (!sd_store_append(buf, buflen, &pos, "%s", SD_STORE_HEADER) ||
        !sd_store_append(buf, buflen, &pos, "flags=%u\n", (unsigned)s->flags))
        return -1;
    for (size_t i = 0; i < SD_STORE_NFIELDS; i++) {
        const char *v = sd_store_value(s, &sd_store_fields[i]);
        if (!v || !sd_store_append(buf, buflen, &pos, "%s=%s\n", sd_store_fields[i].key, v))
            return -1;
    }
    if (!sd_store_append(buf, buflen, &pos, "crc32=%08X\n", (unsigned)sd_store_crc32(buf, pos)))
        return -1;
    if (pos > SD_STORE_MAX_FILE)
        return -1;
    return (int)pos;
}

/* ------------------------------------------------------------------ */
/* Parse                                                              */
/* ------------------------------------------------------------------ */

/* "crc32=" + 8 upper-case hex digits + "\n" */
#define SD_STORE_CRC_LINE_LEN 15

static bool sd_store_parse_hex32(const char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) {
        char c = p[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return false;
        v = (v << 4) | (uint32_t)d;
    }
    *out = v;
    return true;
}

/* The closing line: exactly "crc32=XXXXXXXX\n" at the very end, matching the bytes before it. */
static bool sd_store_check_crc(const char *buf, size_t len)
{
    const char *line;
    uint32_t want;

    if (len < sizeof SD_STORE_HEADER - 1 + SD_STORE_CRC_LINE_LEN)
        return false;
    line = buf + len - SD_STORE_CRC_LINE_LEN;
    if (line[-1] != '\n' || memcmp(line, "crc32=", 6) != 0 || line[SD_STORE_CRC_LINE_LEN - 1] != '\n')
        return false;
    if (!sd_store_parse_hex32(line + 6, &want))
        return false;
    return sd_store_crc32(buf, len - SD_STORE_CRC_LINE_LEN) == want;
}

/* flags: a decimal number of known bits only, no sign, no leading zeros
 * (at most 9 digits, so the arithmetic cannot wrap into a valid value). */
static bool sd_store_parse_flags(const char *v, size_t n, uint32_t *out)
{
    uint32_t f = 0;
    if (n == 0 || n > 9 || (n > 1 && v[0] == '0'))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        f = f * 10 + (uint32_t)(v[i] - '0');
    }
    if ((f & ~sd_store_known_flags) != 0)
        return false;
    *out = f;
    return true;
}

/* One "key=value" line (without its newline). seen: which keys were read (bit 0: flags). */
static bool sd_store_parse_line(const char *line, size_t n, struct sd_state *out, uint32_t *seen)
{
    const char *eq = memchr(line, '=', n);
    size_t klen, vlen;
    const char *v;

    if (!eq)
        return false;
    klen = (size_t)(eq - line);
    v = eq + 1;
    vlen = n - klen - 1;
    for (size_t i = 0; i < vlen; i++)
        if (!sd_store_printable(v[i]))
            return false;
    if (klen == 5 && memcmp(line, "flags", 5) == 0) {
        if (*seen & 1u)
            return false;
        *seen |= 1u;
        return sd_store_parse_flags(v, vlen, &out->flags);
    }
    for (size_t i = 0; i < SD_STORE_NFIELDS; i++) {
        const struct sd_store_field *f = &sd_store_fields[i];
        uint32_t bit = 1u << (i + 1);
        if (strlen(f->key) != klen || memcmp(line, f->key, klen) != 0)
            continue;
        if ((*seen & bit) || vlen >= f->size)
            return false;
        *seen |= bit;
        memcpy((char *)out + f->off, v, vlen);
        ((char *)out + f->off)[vlen] = '\0';
        return true;
    }
    return false; /* an unknown key: a newer format or garbage, either way not ours */
}

enum sd_store_result sd_store_parse(const char *buf, size_t len, struct sd_state *out)
{
    const uint32_t all = (1u << (SD_STORE_NFIELDS + 1)) - 1;
    const size_t hlen = sizeof SD_STORE_HEADER - 1;
    struct sd_state st;
    uint32_t seen = 0;
    size_t pos, end;

    if (!buf || len > SD_STORE_MAX_FILE || !sd_store_check_crc(buf, len))
        return SD_STORE_CORRUPT;
    if (memcmp(buf, SD_STORE_HEADER, hlen) != 0)
        return SD_STORE_CORRUPT;
    memset(&st, 0, sizeof st);
    end = len - SD_STORE_CRC_LINE_LEN;
    for (pos = hlen; pos < end;) {
        const char *nl = memchr(buf + pos, '\n', end - pos);
        if (!nl)
            return SD_STORE_CORRUPT;
        if (!sd_store_parse_line(buf + pos, (size_t)(nl - (buf + pos)), &st, &seen))
            return SD_STORE_CORRUPT;
        pos = (size_t)(nl - buf) + 1;
    }
    if (seen != all)
        return SD_STORE_CORRUPT;
    *out = st;
    return SD_STORE_OK;
}

/* ------------------------------------------------------------------ */
/* Load                                                               */
/* ------------------------------------------------------------------ */

/* Read at most cap bytes; *len receives how many. -1 with errno on failure. */
static int sd_store_read_all(int fd, char *buf, size_t cap, size_t *len)
{
    size_t got = 0;
    while (got < cap) {
        ssize_t n = read(fd, buf + got, cap - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    *len = got;
    return 0;
}

enum sd_store_result sd_store_load(const char *path, struct sd_state *out, char *err, size_t errlen)
{
    /* one byte more than allowed, so an oversized file is seen as such */
    char buf[SD_STORE_MAX_FILE + 1];
    size_t len = 0;
    enum sd_store_result r;
    int fd, rc, saved;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        sd_store_seterr(err, errlen, "%s: no state (first boot)", path);
        return SD_STORE_ABSENT;
    }
    if (fd < 0) {
        sd_store_seterr(err, errlen, "open %s: %s", path, strerror(errno));
        return SD_STORE_IOERR;
    }
    rc = sd_store_read_all(fd, buf, sizeof buf, &len);
    saved = errno;
    close(fd);
    if (rc < 0) {
        sd_store_seterr(err, errlen, "read %s: %s", path, strerror(saved));
        return SD_STORE_IOERR;
    }
    r = sd_store_parse(buf, len, out);
    if (r == SD_STORE_CORRUPT)
        sd_store_seterr(err, errlen, "%s: not a complete, valid state file (%zu bytes%s)", path, len,
                        len > SD_STORE_MAX_FILE ? ", too large" : "");
    return r;
}

/* ------------------------------------------------------------------ */
/* Save                                                               */
/* ------------------------------------------------------------------ */

static int sd_store_posix_open(void *ctx, const char *path, int flags, mode_t mode)
{
    (void)ctx;
    return open(path, flags, mode);
}

static ssize_t sd_store_posix_write(void *ctx, int fd, const void *buf, size_t len)
{
    (void)ctx;
    return write(fd, buf, len);
}

static int sd_store_posix_fsync(void *ctx, int fd)
{
    (void)ctx;
    return fsync(fd);
}

static int sd_store_posix_close(void *ctx, int fd)
{
    (void)ctx;
    return close(fd);
}

static int sd_store_posix_rename(void *ctx, const char *from, const char *to)
{
    (void)ctx;
    return rename(from, to);
}

static int sd_store_posix_unlink(void *ctx, const char *path)
{
    (void)ctx;
    return unlink(path);
}

static const struct sd_store_fs sd_store_posix = {
    sd_store_posix_open, sd_store_posix_write, sd_store_posix_fsync, sd_store_posix_close,
    sd_store_posix_rename, sd_store_posix_unlink, NULL,
};

/* Write everything, retrying short writes and EINTR. */
static int sd_store_write_all(const struct sd_store_fs *fs, int fd, const char *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = fs->write(fs->ctx, fd, buf + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0) {
            errno = EIO; /* a regular file never takes 0 bytes of a non-empty write */
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

/* The directory holding path ("." when path has no slash). */
static bool sd_store_dirname(const char *path, char *dir, size_t dirlen)
{
    const char *slash = strrchr(path, '/');
    size_t n;
    if (!slash)
        return (size_t)snprintf(dir, dirlen, ".") < dirlen;
    n = slash == path ? 1 : (size_t)(slash - path); /* "/state" lives in "/" */
    if (n >= dirlen)
        return false;
    memcpy(dir, path, n);
    dir[n] = '\0';
    return true;
}

/*
 * Make the rename durable: fsync the directory that holds the entry.
 * Returns the name of the call that failed, or NULL.
 */
static const char *sd_store_sync_dir(const struct sd_store_fs *fs, const char *dir)
{
    int fd = fs->open(fs->ctx, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0)
        return "open";
    if (fs->fsync(fs->ctx, fd) < 0) {
        int saved = errno;
        (void)fs->close(fs->ctx, fd);
        errno = saved;
        return "fsync";
    }
    if (fs->close(fs->ctx, fd) < 0)
        return "close";
    return NULL;
}

/* Write the temporary file completely and durably. Returns the failed call's name, or NULL. */
static const char *sd_store_write_tmp(const struct sd_store_fs *fs, const char *tmp, const char *buf, size_t len)
{
    int fd = fs->open(fs->ctx, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    const char *failed = NULL;
    if (fd < 0)
        return "open";
    if (sd_store_write_all(fs, fd, buf, len) < 0)
        failed = "write";
    else if (fs->fsync(fs->ctx, fd) < 0)
        failed = "fsync";
    if (failed) {
        int saved = errno;
        (void)fs->close(fs->ctx, fd);
        errno = saved;
        return failed;
    }
    /* close can report a delayed write error (NFS): the file is not known good then */
    return fs->close(fs->ctx, fd) < 0 ? "close" : NULL;
}

enum sd_store_result sd_store_save(const char *path, const struct sd_state *s, const struct sd_store_fs *fs,
                                   char *err, size_t errlen)
{
    char buf[SD_STORE_MAX_FILE];
    char tmp[SD_STORE_PATH_MAX], dir[SD_STORE_PATH_MAX];
    const char *failed;
    int len, saved;

    if (!fs)
        fs = &sd_store_posix;
    len = sd_store_format(s, buf, sizeof buf);
    if (len < 0) {
        sd_store_seterr(err, errlen, "%s: state not storable (a field is unterminated or not printable ASCII)", path);
        return SD_STORE_IOERR;
    }
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp || !sd_store_dirname(path, dir, sizeof dir)) {
        sd_store_seterr(err, errlen, "%s: path too long", path);
        return SD_STORE_IOERR;
    }
    failed = sd_store_write_tmp(fs, tmp, buf, (size_t)len);
    if (failed) {
        saved = errno;
        (void)fs->unlink(fs->ctx, tmp); /* best effort: a stale tmp is harmless (truncated next time) */
        sd_store_seterr(err, errlen, "%s %s: %s", failed, tmp, strerror(saved));
        return SD_STORE_IOERR;
    }
    if (fs->rename(fs->ctx, tmp, path) < 0) {
        saved = errno;
        (void)fs->unlink(fs->ctx, tmp);
        sd_store_seterr(err, errlen, "rename %s -> %s: %s", tmp, path, strerror(saved));
        return SD_STORE_IOERR;
    }
    failed = sd_store_sync_dir(fs, dir);
    if (failed) {
        /* the new state is in place but may not survive a power loss */
        sd_store_seterr(err, errlen, "%s %s (directory): %s", failed, dir, strerror(errno));
        return SD_STORE_IOERR;
    }
    return SD_STORE_OK;
}

const char *sd_store_result_name(enum sd_store_result r)
{
    switch (r) {
    case SD_STORE_OK:
        return "ok";
    case SD_STORE_ABSENT:
        return "absent";
    case SD_STORE_CORRUPT:
        return "corrupt";
    case SD_STORE_IOERR:
        return "ioerr";
    }
    return "unknown";
}
