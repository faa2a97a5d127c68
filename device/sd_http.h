/*
 * sd_http.h - libstampdevice: the HTTP/1.1 client codec both drivers share.
 *
 * No I/O: sd_http_format_request turns an sd_request into bytes, and
 * sd_http_parser consumes the bytes of one response as they arrive and says
 * when it is complete (Content-Length, chunked, or close-delimited bodies),
 * with the status, Retry-After (seconds, or -1) and the body.
 */
#ifndef STAMPDEVICE_SD_HTTP_H
#define STAMPDEVICE_SD_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "sd_machine.h"

#define SD_HTTP_MAX_HEADER 16384
#define SD_HTTP_MAX_BODY (256 * 1024)

/* Request bytes with Host, Content-Type/Length, Accept, User-Agent, Authorization and
 * "Connection: keep-alive" (or close). Returns the length, or -1 if buf is too small. */
int sd_http_format_request(const struct sd_request *rq, bool keep_alive, char *buf, size_t buflen);

enum sd_http_state { SD_HTTP_PARTIAL, SD_HTTP_DONE, SD_HTTP_ERROR };

struct sd_http_parser; /* opaque; allocates its body buffer lazily */

struct sd_http_parser *sd_http_parser_new(void);
void sd_http_parser_free(struct sd_http_parser *p);
void sd_http_parser_reset(struct sd_http_parser *p); /* for the next response on the connection */

/*
 * Feed bytes; *used receives how many were consumed (the rest belong to the
 * next response). eof: the peer closed (ends a close-delimited body; an
 * incomplete response then is an ERROR).
 */
enum sd_http_state sd_http_parser_feed(struct sd_http_parser *p, const char *data, size_t len, bool eof,
                                       size_t *used);

int sd_http_status(const struct sd_http_parser *p);
int sd_http_retry_after(const struct sd_http_parser *p);  /* seconds, -1 when absent */
bool sd_http_keep_alive(const struct sd_http_parser *p);  /* the connection may be reused */
const char *sd_http_body(const struct sd_http_parser *p, size_t *len);
const char *sd_http_error(const struct sd_http_parser *p);

#endif
