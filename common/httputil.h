/*
 * httputil.h - small HTTP helpers shared by the daemons' servers.
 */
#ifndef STAMPCP_HTTPUTIL_H
#define STAMPCP_HTTPUTIL_H

#include <stdbool.h>

/*
 * Split a raw request path ("/a/b%2Fc") into percent-decoded segments
 * (malloc'ed; the caller frees them, also on failure). False if the path
 * does not start with '/', has more than max segments, or a segment decodes
 * to a NUL byte or invalid UTF-8 - such a segment can't name anything served.
 */
bool httputil_split_path(const char *raw, char **segs, int max, int *nsegs);

#endif
