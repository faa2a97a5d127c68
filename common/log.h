/*
 * log.h - structured, one-line-per-event logging shared by every daemon.
 *
 * A line looks like:
 *   ts=2026-11-27T02:30:00.123Z level=info component=controlplane req=7f3a event=listening addr=127.0.0.1:8080
 * The caller's format supplies the key=value pairs after the fixed prefix; values
 * that may contain spaces or quotes go through log_quote() first.
 */
#ifndef STAMPCP_LOG_H
#define STAMPCP_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Set the component name written on every line and the lowest level printed. */
void log_init(const char *component, enum log_level level);
/* Parse "debug|info|warn|error"; returns -1 for anything else. */
int log_level_parse(const char *s);
enum log_level log_get_level(void);

/* Filtered before formatting: a debug line costs nothing when debug is off. */
#define log_enabled(lvl) ((lvl) >= log_get_level())

void log_write(enum log_level level, const char *req_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vwrite(enum log_level level, const char *req_id, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, NULL, __VA_ARGS__); } while (0)
#define log_info(...)  do { if (log_enabled(LOG_INFO))  log_write(LOG_INFO,  NULL, __VA_ARGS__); } while (0)
#define log_warn(...)  do { if (log_enabled(LOG_WARN))  log_write(LOG_WARN,  NULL, __VA_ARGS__); } while (0)
#define log_error(...) log_write(LOG_ERROR, NULL, __VA_ARGS__)

/*
 * Quote a value for a key=value line: returns buf, holding the value wrapped in
 * double quotes with '"', '\\' and control characters escaped, truncated to fit.
 */
const char *log_quote(const char *value, char *buf, size_t buflen);

#endif
