/*
 * stampcheck.h - does a stamp's load report agree with the catalog about
 * where the stamp is? A report whose region (or geography, when it names
 * one) differs from the catalog's comes from a misconfigured or forged agent:
 * the stamp is flagged ("misreported" health in the admin API, a log line
 * when it starts and when it ends) and placement never uses it
 * (docs/security.md, "Residency in the plumbing").
 *
 * Ownership: struct stampcheck owns its timer and its set of flagged stamp
 * ids; the layout and load table are borrowed from struct cp.
 */
#ifndef CP_STAMPCHECK_H
#define CP_STAMPCHECK_H

#include <stdbool.h>
#include <stddef.h>

#include "layout.h"
#include "loadtable.h"

struct cp;
struct stampcheck;

/*
 * Whether the stamp's last report contradicts the catalog (st); when it
 * does and detail is not NULL, detail says how (e.g. "reported region
 * us-east, catalog eu-west"). No report, or one that names no region: no
 * conflict.
 */
bool stampcheck_conflict(const struct layout_stamp *st, const struct load_entry *e, char *detail, size_t len);

/* Check every stamp of the current layout every interval_ms; log changes. */
struct stampcheck *stampcheck_new(struct cp *cp, int interval_ms);
void stampcheck_free(struct stampcheck *sc);

#endif
