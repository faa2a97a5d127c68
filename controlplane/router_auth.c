/*
 * router_auth.c - a device request's credential: which one it carries (a
 * device SAS token, an installer token, an operator token or API key the
 * gate verified, or a client certificate) and whether the tenant accepts it.
 * Failures answer 401 with the code that names what was wrong, never
 * whether the tenant exists.
 */
#include "router_req.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http_server.h"
#include "log.h"
#include "pseudonym.h"
#include "util.h"
#include "x509ca.h"

/* An X.509 device: the subject's single CN is the registration id of the
 * path, and the chain it sent verifies against one of the tenant's
 * verified, enabled CAs (with the stamp's leaf rules: validity, clientAuth
 * when it has an extended key usage). Logs why not (debug level). */
static bool auth_x509_accepted(struct router_req *d, const struct tenant *t)
{
    char *cn = x509ca_cn(d->cert);
    char err[160], ps[PSEUDONYM_LEN];
    bool ok;
    if (!cn || strcmp(cn, d->regid) != 0) {
        snprintf(err, sizeof err, "%s", cn ? "the certificate's CN is not the registration id of the path"
                                           : "the certificate's subject has no single CN");
        ok = false;
    } else {
        ok = x509ca_verify_device(t->cas, t->ncas, d->cert, d->chain, err, sizeof err);
    }
    free(cn);
    if (!ok && log_enabled(LOG_DEBUG))   /* debug only: a flood of bad certificates must not flood the log */
        log_write(LOG_DEBUG, d->id, "event=device_certificate_refused tenant=%s device=%s reason=\"%s\"",
                  d->tenant_id, pseudonym_device(&d->cp->pseudo, d->tenant_id, d->regid, ps), err);
    return ok;
}

/* The credential read by router_auth_read, against the tenant's keys,
 * installer tokens or CAs. */
bool router_auth_verify(struct router_req *d, const struct tenant *t)
{
    if (d->auth == AUTH_SAS) {
        if (!tenant_verify_device_sas(t, d->regid, &d->sas)) {
            router_unauthorized(d, "invalid_signature");
            return false;
        }
    } else if (d->auth == AUTH_INSTALLER) {
        const struct tenant_installer *ti = tenant_find_installer(t, d->bearer_sha);
        char msg[200];
        if (!ti || ti->expires_wall_ms <= util_wall_ms()) {   /* unknown, revoked or expired */
            router_unauthorized(d, "unauthorized");
            return false;
        }
        if (ti->prefix && strncmp(d->regid, ti->prefix, strlen(ti->prefix)) != 0) {
            snprintf(msg, sizeof msg, "this installer token acts only for registration ids starting with '%s'",
                     ti->prefix);
            router_error(d, 403, "installer_scope", "registrationId", msg);
            return false;
        }
        snprintf(d->inst_id, sizeof d->inst_id, "%s", ti->id);
    } else if (d->auth == AUTH_X509 && !auth_x509_accepted(d, t)) {
        router_unauthorized(d, "invalid_certificate");
        return false;
    }
    return true;
}

bool router_auth_read(struct router_req *d, bool operator_only)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(d->r->ev), "Authorization");
    enum sas_error se;
    X509 *cert;

    if (h && strncmp(h, "SharedAccessSignature ", 22) == 0 && !operator_only) {
        d->auth = AUTH_SAS;
        if ((se = sas_parse(h, &d->sas)) != SAS_OK ||
            (se = sas_check_claims(&d->sas, d->tenant_id, d->regid, util_wall_ms() / 1000)) != SAS_OK) {
            router_unauthorized(d, sas_error_code(se));
            return false;
        }
        return true;
    }
    if (h && strncasecmp(h, "Bearer ", 7) == 0) {
        const char *tok = h + 7;
        if (d->r->who.kind == PRINCIPAL_KEY) {
            d->auth = AUTH_OPERATOR;   /* an API key the gate verified, for this tenant, with provision:on-behalf */
            return true;
        }
        if (cpreq_is_operator(d->r)) {
            d->auth = AUTH_OPERATOR;
            if (d->r->who.kind == PRINCIPAL_NONE) {
                /* the break-glass credential on a device route: its use is audited (audit.h) */
                d->r->who.kind = PRINCIPAL_OPERATOR;
                d->r->who.scopes = SCOPE_ALL;
                snprintf(d->r->who.name, sizeof d->r->who.name, "operator token");
            }
            return true;
        }
        if (!operator_only) {
            installer_tokens_hash(tok, d->bearer_sha);
            d->auth = AUTH_INSTALLER;
            return true;
        }
    }
    if (!h && !operator_only && (cert = http_server_peer_cert(d->r->ev)) != NULL) {
        /* No Authorization header, a client certificate: an X.509 device (verified in auth_on_tenant). */
        STACK_OF(X509) *chain = http_server_peer_chain(d->r->ev);
        d->auth = AUTH_X509;
        X509_up_ref(cert);
        d->cert = cert;
        d->chain = chain ? X509_chain_up_ref(chain) : NULL;
        return true;
    }
    cpreq_add_header(d->r, "WWW-Authenticate", "Bearer");
    router_error(d, 401, "unauthorized", NULL,
              "a device SAS token, a bearer token or a client certificate is required");
    return false;
}
