/*
 * fuzz_util.h - helpers shared by the libFuzzer harnesses (header only).
 *
 * fuzz_str: a NUL-terminated malloc'ed copy of the input (caller frees).
 * fuzz_file: the input as an anonymous in-memory file, for parsers that take
 * a path: fills path with "/proc/self/fd/N" and returns the fd (caller
 * closes it), or -1.
 */
#ifndef STAMPCP_FUZZ_UTIL_H
#define STAMPCP_FUZZ_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static inline char *fuzz_str(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

static inline int fuzz_file(const uint8_t *data, size_t size, char *path, size_t pathlen)
{
    int fd = memfd_create("fuzz", MFD_CLOEXEC);
    size_t off = 0;
    if (fd < 0)
        return -1;
    while (off < size) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    snprintf(path, pathlen, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
