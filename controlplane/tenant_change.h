/*
 * tenant_change.h - the one way a committed change to a tenant (its keys,
 * installer tokens, CAs, status, removal) reaches every control plane: the
 * local cached copy is dropped, "tenant <id>" is published on Redis and
 * awaited on this instance's own subscription, the copy is dropped again
 * (a fetch may have raced the publish), and the reconciler is woken.
 *
 * Ownership: done(arg) is called exactly once, never from inside
 * tenant_change_announce(); the caller keeps arg alive until then.
 */
#ifndef CP_TENANT_CHANGE_H
#define CP_TENANT_CHANGE_H

struct cp;

void tenant_change_announce(struct cp *cp, const char *tenant, void (*done)(void *arg), void *arg);

#endif
