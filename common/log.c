/*
 * log.c - the structured log writer: a timestamped key=value line per event,
 * written with one write(2) so lines from concurrent processes never interleave.
 */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *log_component = "stampcp";
static enum log_level log_min_level = LOG_INFO;
static const char *const log_level_names[] = {"debug", "info", "warn", "error"};

void log_init(const char *component, enum log_level level)
{
    log_component = component;
    log_min_level = level;
}

enum log_level log_get_level(void) { return log_min_level; }

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, log_level_names[i]) == 0)
            return i;
    return -1;
}

const char *log_quote(const char *value, char *buf, size_t buflen)
{
    size_t o = 0;
    if (buflen < 3) {
        if (buflen) buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)(value ? value : ""); *p; p++) {
        char esc[8];
        size_t n;
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\'; esc[1] = (char)*p; n = 2;
        } else if (*p < 0x20 || *p == 0x7f) {
            n = (size_t)snprintf(esc, sizeof esc, "\\x%02x", *p);
        } else {
            esc[0] = (char)*p; n = 1;
        }
        if (o + n + 2 > buflen)
            break;
        memcpy(buf + o, esc, n);
        o += n;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

void log_vwrite(enum log_level level, const char *req_id, const char *fmt, va_list ap)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    size_t n;
    int r;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof line, "ts=%Y-%m-%dT%H:%M:%S", &tm);
    r = snprintf(line + n, sizeof line - n, ".%03ldZ level=%s component=%s",
                 ts.tv_nsec / 1000000L, log_level_names[level], log_component);
    if (r > 0) n += (size_t)r;
    if (req_id && n < sizeof line) {
        r = snprintf(line + n, sizeof line - n, " req=%s", req_id);
        if (r > 0) n += (size_t)r;
    }
    if (n < sizeof line - 1) {
        line[n++] = ' ';
        r = vsnprintf(line + n, sizeof line - n, fmt, ap);
        if (r > 0) n += (size_t)r;
    }
    if (n > sizeof line - 2)
        n = sizeof line - 2;   /* truncated: keep the newline */
    line[n++] = '\n';
    /* One write per line; a short write to stderr is not worth retrying. */
    if (write(STDERR_FILENO, line, n) < 0) {
        /* nothing sensible to do */
    }
}

void log_write(enum log_level level, const char *req_id, const char *fmt, ...)
{
    va_list ap;
    if (level < log_min_level)
        return;
    va_start(ap, fmt);
    log_vwrite(level, req_id, fmt, ap);
    va_end(ap);
}
