/*
 * test_sd_store.c - the device state file (device/sd_store.c): round trips,
 * the exact sequence of file-system calls of the atomic save, a simulated
 * crash after every one of them (a torn write included) leaving the old or
 * the new state and nothing else, and every kind of damaged file (truncated
 * at each length, each byte changed to each other value, garbage, empty,
 * oversized, well-formed but wrong) refused as CORRUPT, never accepted.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "sd_store.h"

static char tmpdir[256];
static char path[512];

/* ------------------------------------------------------------------ */
/* helpers                                                            */
/* ------------------------------------------------------------------ */

static void fill(char *dst, size_t size, const char *s)
{
    snprintf(dst, size, "%s", s);
}

/* Every field at its maximum length, every printable character used somewhere. */
static void full_state(struct sd_state *s, char seed)
{
    char *fields[] = { s->registration_id, s->tenant_id, s->geography, s->region, s->stamp,
                       s->id_scope, s->dps_endpoint, s->assigned_hub, s->device_id, s->etag };
    size_t sizes[] = { sizeof s->registration_id, sizeof s->tenant_id, sizeof s->geography, sizeof s->region,
                       sizeof s->stamp, sizeof s->id_scope, sizeof s->dps_endpoint, sizeof s->assigned_hub,
                       sizeof s->device_id, sizeof s->etag };
    int c = seed;
    memset(s, 0, sizeof *s);
    s->flags = SD_STATE_ASSIGNED | SD_STATE_HUB;
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        for (size_t i = 0; i + 1 < sizes[f]; i++) {
            fields[f][i] = (char)(0x20 + c % 95);
            c++;
        }
    }
}

static void small_state(struct sd_state *s)
{
    memset(s, 0, sizeof *s);
    s->flags = SD_STATE_ASSIGNED;
    fill(s->registration_id, sizeof s->registration_id, "dev-1");
    fill(s->tenant_id, sizeof s->tenant_id, "acme");
    fill(s->geography, sizeof s->geography, "eu");
    fill(s->region, sizeof s->region, "eu-west");
    fill(s->stamp, sizeof s->stamp, "eu-west-1");
    fill(s->id_scope, sizeof s->id_scope, "0ne0000EW10");
    fill(s->dps_endpoint, sizeof s->dps_endpoint, "127.0.0.1:9443");
    fill(s->etag, sizeof s->etag, "1");
}

static void assert_state_equal(const struct sd_state *a, const struct sd_state *b)
{
    assert_memory_equal(a, b, sizeof *a);
}

static int format(const struct sd_state *s, char *buf, size_t len)
{
    int n = sd_store_format(s, buf, len);
    assert_true(n > 0);
    return n;
}

static void write_raw(const char *p, const void *data, size_t len)
{
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
}

/* CRC-32 (IEEE), written independently of the one under test. */
static uint32_t ref_crc32(const char *buf, size_t len)
{
    uint32_t c = ~0u;
    for (size_t i = 0; i < len; i++) {
        c ^= (uint8_t)buf[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

/* body + a correct crc line: well-formed framing around whatever body says. */
static enum sd_store_result parse_with_crc(const char *body)
{
    char buf[16384];
    struct sd_state st;
    int n = snprintf(buf, sizeof buf, "%scrc32=%08X\n", body, (unsigned)ref_crc32(body, strlen(body)));
    assert_true(n > 0 && (size_t)n < sizeof buf);
    return sd_store_parse(buf, (size_t)n, &st);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

/* ------------------------------------------------------------------ */
/* A file system that records calls and "crashes" after k of them     */
/* ------------------------------------------------------------------ */

enum op { OP_OPEN, OP_WRITE, OP_FSYNC, OP_CLOSE, OP_RENAME, OP_UNLINK };

struct crashfs {
    int limit;         /* calls allowed; -1: no limit */
    int calls;         /* calls made (failed ones included) */
    bool crashed;
    size_t chunk;      /* short writes: at most this many bytes per write (0: all) */
    bool eintr_once;   /* the first write fails with EINTR */
    enum op log[64];
    int open_flags[4];
    mode_t open_mode[4];
    char open_path[4][512];
    int nopen;
};

/* Whether this call may run; a crashed file system fails everything with EIO. */
static bool crashfs_enter(struct crashfs *c, enum op op)
{
    if (c->calls < (int)(sizeof c->log / sizeof c->log[0]))
        c->log[c->calls] = op;
    c->calls++;
    if (c->crashed || (c->limit >= 0 && c->calls > c->limit)) {
        c->crashed = true;
        errno = EIO;
        return false;
    }
    return true;
}

static int crashfs_open(void *ctx, const char *p, int flags, mode_t mode)
{
    struct crashfs *c = ctx;
    if (c->nopen < 4) {
        c->open_flags[c->nopen] = flags;
        c->open_mode[c->nopen] = mode;
        snprintf(c->open_path[c->nopen], sizeof c->open_path[0], "%s", p);
        c->nopen++;
    }
    if (!crashfs_enter(c, OP_OPEN))
        return -1;
    return open(p, flags, mode);
}

static ssize_t crashfs_write(void *ctx, int fd, const void *buf, size_t len)
{
    struct crashfs *c = ctx;
    bool last = c->limit >= 0 && c->calls + 1 == c->limit + 1 && !c->crashed;
    if (last && len > 1) {
        /* the crash lands mid-write: half the bytes reach the file */
        ssize_t n = write(fd, buf, len / 2);
        assert_true(n >= 0);
        (void)crashfs_enter(c, OP_WRITE);
        return -1;
    }
    if (!crashfs_enter(c, OP_WRITE))
        return -1;
    if (c->eintr_once) {
        c->eintr_once = false;
        errno = EINTR;
        return -1;
    }
    if (c->chunk && len > c->chunk)
        len = c->chunk;
    return write(fd, buf, len);
}

static int crashfs_fsync(void *ctx, int fd)
{
    struct crashfs *c = ctx;
    return crashfs_enter(c, OP_FSYNC) ? fsync(fd) : -1;
}

static int crashfs_close(void *ctx, int fd)
{
    struct crashfs *c = ctx;
    if (!crashfs_enter(c, OP_CLOSE)) {
        close(fd); /* the process died: the kernel closes it; the test must not leak it */
        return -1;
    }
    return close(fd);
}

static int crashfs_rename(void *ctx, const char *from, const char *to)
{
    struct crashfs *c = ctx;
    return crashfs_enter(c, OP_RENAME) ? rename(from, to) : -1;
}

static int crashfs_unlink(void *ctx, const char *p)
{
    struct crashfs *c = ctx;
    return crashfs_enter(c, OP_UNLINK) ? unlink(p) : -1;
}

static struct sd_store_fs crashfs_ops(struct crashfs *c)
{
    struct sd_store_fs fs = { crashfs_open, crashfs_write, crashfs_fsync, crashfs_close,
                              crashfs_rename, crashfs_unlink, c };
    return fs;
}

/* ------------------------------------------------------------------ */
/* setup                                                              */
/* ------------------------------------------------------------------ */

static int setup(void **state)
{
    const char *base = getenv("TMPDIR");
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "%s/test_sd_store.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(path, sizeof path, "%s/state", tmpdir);
    return 0;
}

static int teardown(void **state)
{
    char p[600];
    (void)state;
    unlink(path);
    snprintf(p, sizeof p, "%s.tmp", path);
    unlink(p);
    return rmdir(tmpdir);
}

static int each_setup(void **state)
{
    char p[600];
    (void)state;
    unlink(path);
    snprintf(p, sizeof p, "%s.tmp", path);
    unlink(p);
    return 0;
}

/* ------------------------------------------------------------------ */
/* tests                                                              */
/* ------------------------------------------------------------------ */

static void test_crc_reference(void **state)
{
    (void)state;
    /* the check value of CRC-32/ISO-HDLC, as zlib's crc32() */
    assert_int_equal(ref_crc32("123456789", 9), 0xCBF43926u);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=0\nregistration_id=\ntenant_id=\ngeography=\n"
                                    "region=\nstamp=\nid_scope=\ndps_endpoint=\nassigned_hub=\ndevice_id=\netag=\n"),
                     SD_STORE_OK);
}

static void test_roundtrip(void **state)
{
    struct sd_state a, b;
    char buf[8192], err[256];
    int n;
    (void)state;

    full_state(&a, 0);
    n = format(&a, buf, sizeof buf);
    assert_memory_equal(buf, "stampdevice-state 1\nflags=3\nregistration_id=", 44);
    memset(&b, 0x55, sizeof b);
    assert_int_equal(sd_store_parse(buf, (size_t)n, &b), SD_STORE_OK);
    assert_state_equal(&a, &b);

    for (char seed = 0; seed < 95; seed += 7) {
        full_state(&a, seed);
        a.flags = (uint32_t)seed % 8;
        assert_int_equal(sd_store_save(path, &a, NULL, err, sizeof err), SD_STORE_OK);
        memset(&b, 0, sizeof b);
        assert_int_equal(sd_store_load(path, &b, err, sizeof err), SD_STORE_OK);
        assert_state_equal(&a, &b);
    }
    small_state(&a);
    assert_int_equal(sd_store_save(path, &a, NULL, err, sizeof err), SD_STORE_OK);
    assert_int_equal(sd_store_load(path, &b, err, sizeof err), SD_STORE_OK);
    assert_state_equal(&a, &b);
    {
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
    }
}

static void test_format_refuses(void **state)
{
    struct sd_state a;
    char buf[8192];
    (void)state;

    small_state(&a);
    assert_int_equal(sd_store_format(&a, buf, 10), -1);          /* too small */
    assert_true(sd_store_format(&a, buf, sizeof buf) > 0);
    a.tenant_id[2] = '\n';                                        /* would forge a line */
    assert_int_equal(sd_store_format(&a, buf, sizeof buf), -1);
    small_state(&a);
    a.region[0] = '\x7f';
    assert_int_equal(sd_store_format(&a, buf, sizeof buf), -1);
    small_state(&a);
    a.stamp[0] = (char)0xc3;                                      /* not ASCII */
    assert_int_equal(sd_store_format(&a, buf, sizeof buf), -1);
    small_state(&a);
    memset(a.etag, 'x', sizeof a.etag);                           /* unterminated */
    assert_int_equal(sd_store_format(&a, buf, sizeof buf), -1);
    small_state(&a);
    a.flags |= 1u << 7;                                           /* unknown flag: would not read back */
    assert_int_equal(sd_store_format(&a, buf, sizeof buf), -1);
    {
        char err[256] = "";
        assert_int_equal(sd_store_save(path, &a, NULL, err, sizeof err), SD_STORE_IOERR);
        assert_non_null(strstr(err, "not storable"));
        assert_int_equal(access(path, F_OK), -1);
    }
}

/* The exact calls, flags and modes of a save (with short writes and an EINTR). */
static void test_call_sequence(void **state)
{
    struct crashfs c = { .limit = -1, .chunk = 37, .eintr_once = true };
    struct sd_store_fs fs = crashfs_ops(&c);
    struct sd_state a, b;
    char buf[8192], tmp[600];
    int n, i = 0, writes;
    (void)state;

    full_state(&a, 3);
    n = format(&a, buf, sizeof buf);
    assert_int_equal(sd_store_save(path, &a, &fs, NULL, 0), SD_STORE_OK);
    assert_int_equal(sd_store_load(path, &b, NULL, 0), SD_STORE_OK);
    assert_state_equal(&a, &b);

    writes = 1 + (n + 36) / 37; /* the EINTR, then 37-byte chunks */
    assert_int_equal(c.calls, 1 + writes + 6);
    assert_int_equal(c.log[i++], OP_OPEN);
    for (int w = 0; w < writes; w++)
        assert_int_equal(c.log[i++], OP_WRITE);
    assert_int_equal(c.log[i++], OP_FSYNC);
    assert_int_equal(c.log[i++], OP_CLOSE);
    assert_int_equal(c.log[i++], OP_RENAME);
    assert_int_equal(c.log[i++], OP_OPEN);
    assert_int_equal(c.log[i++], OP_FSYNC);
    assert_int_equal(c.log[i++], OP_CLOSE);

    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_equal(c.nopen, 2);
    assert_string_equal(c.open_path[0], tmp);
    assert_int_equal(c.open_flags[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC);
    assert_int_equal(c.open_mode[0], 0600);
    assert_string_equal(c.open_path[1], tmpdir);
    assert_int_equal(c.open_flags[1] & (O_DIRECTORY | O_ACCMODE), O_DIRECTORY | O_RDONLY);
    assert_int_equal(access(tmp, F_OK), -1);
}

/*
 * Crash after each call of the save (the k-th call and all later ones
 * fail, a write at the crash point writing half its bytes): the file then
 * holds exactly the old state or exactly the new one. had_old: whether a
 * state existed before (else "old" means ABSENT).
 */
static void crash_everywhere(bool had_old, size_t chunk)
{
    struct sd_state old_st, new_st, got;
    char err[256];
    int k, saw_old = 0, saw_new = 0;

    full_state(&old_st, 11);
    full_state(&new_st, 42);
    new_st.flags = SD_STATE_ASSIGNED | SD_STATE_HUB | SD_STATE_RETIRED;
    for (k = 0; k < 200; k++) {
        struct crashfs c = { .limit = k, .chunk = chunk };
        struct sd_store_fs fs = crashfs_ops(&c);
        enum sd_store_result r, lr;

        each_setup(NULL);
        if (had_old)
            assert_int_equal(sd_store_save(path, &old_st, NULL, err, sizeof err), SD_STORE_OK);
        err[0] = '\0';
        r = sd_store_save(path, &new_st, &fs, err, sizeof err);
        memset(&got, 0, sizeof got);
        lr = sd_store_load(path, &got, err, sizeof err);
        if (r == SD_STORE_OK) {
            assert_false(c.crashed);
            assert_int_equal(lr, SD_STORE_OK);
            assert_state_equal(&got, &new_st);
            break;
        }
        assert_int_equal(r, SD_STORE_IOERR);
        assert_true(c.crashed);
        assert_true(strlen(err) > 0);
        if (lr == SD_STORE_ABSENT) {
            assert_false(had_old);
            saw_old++;
        } else {
            assert_int_equal(lr, SD_STORE_OK);
            if (memcmp(&got, &new_st, sizeof got) != 0) {
                assert_true(had_old);
                assert_state_equal(&got, &old_st);
                saw_old++;
            } else {
                saw_new++; /* crashed after the rename: the new state is already in place */
            }
        }
        /* after the "reboot" a plain save works over whatever the crash left */
        assert_int_equal(sd_store_save(path, &new_st, NULL, err, sizeof err), SD_STORE_OK);
        assert_int_equal(sd_store_load(path, &got, err, sizeof err), SD_STORE_OK);
        assert_state_equal(&got, &new_st);
    }
    assert_true(k >= 8 && k < 200); /* every call was a crash point once, then it succeeded */
    assert_true(saw_old > 0 && saw_new == 3); /* rename, open(dir), fsync(dir) crash points see new */
}

static void test_crash_each_step(void **state)
{
    (void)state;
    crash_everywhere(true, 0);
    crash_everywhere(false, 0);
    crash_everywhere(true, 100); /* many writes: a crash between and inside each */
    crash_everywhere(false, 100);
}

/* Failures that are not crashes: the save says which call failed, the old state stays. */
static void test_failure_messages(void **state)
{
    struct sd_state a, got;
    char err[256] = "", p[600];
    (void)state;

    small_state(&a);
    snprintf(p, sizeof p, "%s/no/such/dir/state", tmpdir);
    assert_int_equal(sd_store_save(p, &a, NULL, err, sizeof err), SD_STORE_IOERR);
    assert_non_null(strstr(err, "open"));
    assert_non_null(strstr(err, "/no/such/dir/state.tmp"));
    assert_non_null(strstr(err, strerror(ENOENT)));

    /* rename onto a directory fails: the tmp is removed, the message names the call */
    snprintf(p, sizeof p, "%s/adir", tmpdir);
    assert_int_equal(mkdir(p, 0700), 0);
    {
        char sub[700], tmp[700];
        snprintf(sub, sizeof sub, "%s/x", p);
        assert_int_equal(mkdir(sub, 0700), 0);
        assert_int_equal(sd_store_save(p, &a, NULL, err, sizeof err), SD_STORE_IOERR);
        assert_non_null(strstr(err, "rename"));
        snprintf(tmp, sizeof tmp, "%s.tmp", p);
        assert_int_equal(access(tmp, F_OK), -1);
        assert_int_equal(rmdir(sub), 0);
        assert_int_equal(rmdir(p), 0);
    }
    /* no err buffer: still no crash */
    snprintf(p, sizeof p, "%s/missing/state", tmpdir);
    assert_int_equal(sd_store_save(p, &a, NULL, NULL, 0), SD_STORE_IOERR);
    assert_int_equal(sd_store_load(p, &got, NULL, 0), SD_STORE_ABSENT);
}

static void test_absent(void **state)
{
    struct sd_state st;
    char err[256] = "";
    (void)state;
    assert_int_equal(sd_store_load(path, &st, err, sizeof err), SD_STORE_ABSENT);
    assert_true(strlen(err) > 0);
}

/* Relative path without a directory part: the directory synced is ".". */
static void test_relative_path(void **state)
{
    struct crashfs c = { .limit = -1 };
    struct sd_store_fs fs = crashfs_ops(&c);
    struct sd_state a, b;
    char cwd[512];
    (void)state;

    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(tmpdir), 0);
    small_state(&a);
    assert_int_equal(sd_store_save("state", &a, &fs, NULL, 0), SD_STORE_OK);
    assert_int_equal(sd_store_load("state", &b, NULL, 0), SD_STORE_OK);
    assert_state_equal(&a, &b);
    assert_string_equal(c.open_path[1], ".");
    assert_int_equal(chdir(cwd), 0);
}

static void test_truncated_every_length(void **state)
{
    struct sd_state a, got;
    char buf[8192];
    int n;
    (void)state;

    full_state(&a, 5);
    n = format(&a, buf, sizeof buf);
    for (int len = 0; len < n; len++)
        assert_int_equal(sd_store_parse(buf, (size_t)len, &got), SD_STORE_CORRUPT);
    /* through the file too, at a spread of lengths */
    for (int len = 0; len < n; len += 13) {
        write_raw(path, buf, (size_t)len);
        assert_int_equal(sd_store_load(path, &got, NULL, 0), SD_STORE_CORRUPT);
    }
    /* a trailing byte more is not the format either */
    buf[n] = '\n';
    assert_int_equal(sd_store_parse(buf, (size_t)n + 1, &got), SD_STORE_CORRUPT);
}

static void test_every_byte_changed(void **state)
{
    struct sd_state a, got;
    char buf[8192];
    int n;
    (void)state;

    small_state(&a);
    n = format(&a, buf, sizeof buf);
    for (int i = 0; i < n; i++) {
        char orig = buf[i];
        for (int v = 0; v < 256; v++) {
            if ((char)v == orig)
                continue;
            buf[i] = (char)v;
            if (sd_store_parse(buf, (size_t)n, &got) != SD_STORE_CORRUPT)
                fail_msg("byte %d changed from 0x%02x to 0x%02x was accepted", i, (unsigned char)orig, v);
        }
        buf[i] = orig;
    }
    assert_int_equal(sd_store_parse(buf, (size_t)n, &got), SD_STORE_OK);
    assert_state_equal(&a, &got);
}

static void test_garbage(void **state)
{
    struct sd_state got;
    static char buf[70000];
    (void)state;

    for (int round = 0; round < 2000; round++) {
        size_t len = rnd() % 2048;
        for (size_t i = 0; i < len; i++)
            buf[i] = (char)(round % 2 ? rnd() : 0x20 + rnd() % 95 + (rnd() % 16 == 0 ? -22 : 0));
        assert_int_equal(sd_store_parse(buf, len, &got), SD_STORE_CORRUPT);
    }
    /* empty and NUL-filled files */
    write_raw(path, "", 0);
    assert_int_equal(sd_store_load(path, &got, NULL, 0), SD_STORE_CORRUPT);
    memset(buf, 0, 4096);
    write_raw(path, buf, 4096);
    assert_int_equal(sd_store_load(path, &got, NULL, 0), SD_STORE_CORRUPT);
    assert_int_equal(sd_store_parse(NULL, 0, &got), SD_STORE_CORRUPT);
}

/* A valid state followed by more than 8 KiB: too large, even though it starts well. */
static void test_huge(void **state)
{
    struct sd_state a, got;
    static char buf[70000];
    char err[256] = "";
    int n;
    (void)state;

    small_state(&a);
    n = format(&a, buf, sizeof buf);
    for (size_t off = (size_t)n; off + (size_t)n < sizeof buf; off += (size_t)n)
        memcpy(buf + off, buf, (size_t)n);
    write_raw(path, buf, sizeof buf);
    assert_int_equal(sd_store_load(path, &got, err, sizeof err), SD_STORE_CORRUPT);
    assert_non_null(strstr(err, "too large"));
    assert_int_equal(sd_store_parse(buf, 8193, &got), SD_STORE_CORRUPT);
}

/* Files with a correct CRC that still are not a valid state. */
static void test_wellformed_but_wrong(void **state)
{
#define REST "tenant_id=acme\ngeography=eu\nregion=r\nstamp=s\nid_scope=x\ndps_endpoint=h:1\n" \
             "assigned_hub=\ndevice_id=\netag=1\n"
    (void)state;
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\nregistration_id=d\n" REST), SD_STORE_OK);
    /* header */
    assert_int_equal(parse_with_crc("stampdevice-state 2\nflags=1\nregistration_id=d\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1 \nflags=1\nregistration_id=d\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("flags=1\nregistration_id=d\n" REST), SD_STORE_CORRUPT);
    /* missing, duplicate, unknown keys; key order is free */
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nregistration_id=d\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\nregistration_id=d\nregistration_id=d\n" REST),
                     SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\nflags=1\nregistration_id=d\n" REST),
                     SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\nregistration_id=d\ncolour=red\n" REST),
                     SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\n" REST "registration_id=d\nflags=1\n"), SD_STORE_OK);
    /* malformed lines */
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\n\nregistration_id=d\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\nregistration_id\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\nregistration_id=d\r\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\nregistration_id=d\tx\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\nREGISTRATION_ID=d\n" REST), SD_STORE_CORRUPT);
    /* flags */
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=8\nregistration_id=d\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=-1\nregistration_id=d\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=01\nregistration_id=d\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=\nregistration_id=d\n" REST), SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=4294967297\nregistration_id=d\n" REST),
                     SD_STORE_CORRUPT);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=7\nregistration_id=d\n" REST), SD_STORE_OK);
    /* oversized value: etag holds 23 characters */
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\nregistration_id=d\n"
                                    "tenant_id=acme\ngeography=eu\nregion=r\nstamp=s\nid_scope=x\ndps_endpoint=h:1\n"
                                    "assigned_hub=\ndevice_id=\netag=12345678901234567890123\n"),
                     SD_STORE_OK);
    assert_int_equal(parse_with_crc("stampdevice-state 1\nflags=1\nregistration_id=d\n"
                                    "tenant_id=acme\ngeography=eu\nregion=r\nstamp=s\nid_scope=x\ndps_endpoint=h:1\n"
                                    "assigned_hub=\ndevice_id=\netag=123456789012345678901234\n"),
                     SD_STORE_CORRUPT);
    /* a NUL byte inside a value (covered by the CRC) */
    {
        char buf[600];
        struct sd_state st;
        int n = snprintf(buf, sizeof buf, "stampdevice-state 1\nflags=1\nregistration_id=dX\n" REST);
        buf[strlen("stampdevice-state 1\nflags=1\nregistration_id=d")] = '\0';
        n += snprintf(buf + n, sizeof buf - (size_t)n, "crc32=%08X\n", (unsigned)ref_crc32(buf, (size_t)n));
        assert_int_equal(sd_store_parse(buf, (size_t)n, &st), SD_STORE_CORRUPT);
    }
    /* the CRC line itself: lower-case hex, missing newline, short */
    {
        const char *body = "stampdevice-state 1\nflags=1\nregistration_id=d\n" REST;
        char buf[600], hex[16];
        struct sd_state st;
        int n;
        snprintf(hex, sizeof hex, "%08x", (unsigned)ref_crc32(body, strlen(body)));
        n = snprintf(buf, sizeof buf, "%scrc32=%s\n", body, hex);
        if (strcmp(hex, "00000000") != 0 && strpbrk(hex, "abcdef"))
            assert_int_equal(sd_store_parse(buf, (size_t)n, &st), SD_STORE_CORRUPT);
        n = snprintf(buf, sizeof buf, "%scrc32=%08X", body, (unsigned)ref_crc32(body, strlen(body)));
        assert_int_equal(sd_store_parse(buf, (size_t)n, &st), SD_STORE_CORRUPT);
    }
#undef REST
}

static void test_result_names(void **state)
{
    (void)state;
    assert_string_equal(sd_store_result_name(SD_STORE_OK), "ok");
    assert_string_equal(sd_store_result_name(SD_STORE_ABSENT), "absent");
    assert_string_equal(sd_store_result_name(SD_STORE_CORRUPT), "corrupt");
    assert_string_equal(sd_store_result_name(SD_STORE_IOERR), "ioerr");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_crc_reference, each_setup),
        cmocka_unit_test_setup(test_roundtrip, each_setup),
        cmocka_unit_test_setup(test_format_refuses, each_setup),
        cmocka_unit_test_setup(test_call_sequence, each_setup),
        cmocka_unit_test_setup(test_crash_each_step, each_setup),
        cmocka_unit_test_setup(test_failure_messages, each_setup),
        cmocka_unit_test_setup(test_absent, each_setup),
        cmocka_unit_test_setup(test_relative_path, each_setup),
        cmocka_unit_test_setup(test_truncated_every_length, each_setup),
        cmocka_unit_test_setup(test_every_byte_changed, each_setup),
        cmocka_unit_test_setup(test_garbage, each_setup),
        cmocka_unit_test_setup(test_huge, each_setup),
        cmocka_unit_test_setup(test_wellformed_but_wrong, each_setup),
        cmocka_unit_test_setup(test_result_names, each_setup),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
