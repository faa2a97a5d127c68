/*
 * sd_store.h - libstampdevice: the device state on disk, written atomically.
 *
 * sd_store_save writes a temporary file beside the target, fsyncs it,
 * renames it over the target and fsyncs the directory: a crash at any point
 * leaves either the old or the new state, never a torn one. The file is
 * text ("key=value" lines) closed by a CRC-32 line, so a truncated or
 * corrupted file is recognised and reported as SD_STORE_CORRUPT: the device
 * then provisions afresh instead of crashing or trusting garbage.
 *
 * The file-system calls go through struct sd_store_fs so that tests can
 * simulate a crash after any step; pass NULL for the real POSIX calls.
 */
#ifndef STAMPDEVICE_SD_STORE_H
#define STAMPDEVICE_SD_STORE_H

#include <stddef.h>
#include <sys/types.h>

#include "sd_state.h"

enum sd_store_result {
    SD_STORE_OK = 0,
    SD_STORE_ABSENT,   /* load: no file (a first boot) */
    SD_STORE_CORRUPT,  /* load: the file is not a complete, valid state */
    SD_STORE_IOERR,    /* errno-level failure; err says which call */
};

/* The calls sd_store_save makes, in order: open(tmp) write* fsync close rename open(dir) fsync close. */
struct sd_store_fs {
    int (*open)(void *ctx, const char *path, int flags, mode_t mode);
    ssize_t (*write)(void *ctx, int fd, const void *buf, size_t len);
    int (*fsync)(void *ctx, int fd);
    int (*close)(void *ctx, int fd);
    int (*rename)(void *ctx, const char *from, const char *to);
    int (*unlink)(void *ctx, const char *path);
    void *ctx;
};

/* Serialise / parse (no I/O). serialise returns the length, or -1 if buf is too small. */
int sd_store_format(const struct sd_state *s, char *buf, size_t buflen);
enum sd_store_result sd_store_parse(const char *buf, size_t len, struct sd_state *out);

/* err: optional, receives a short message on failure. fs: NULL for POSIX. */
enum sd_store_result sd_store_save(const char *path, const struct sd_state *s, const struct sd_store_fs *fs,
                                   char *err, size_t errlen);
enum sd_store_result sd_store_load(const char *path, struct sd_state *out, char *err, size_t errlen);

const char *sd_store_result_name(enum sd_store_result r);

#endif
