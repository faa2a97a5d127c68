-- Cache invalidations written in the same transaction as the tenant change
-- they announce (issue 14, finding 8): triggers on what the tenant and
-- API-key caches hold, so every writer (api_tenants, api_certificates,
-- api_installer_tokens, offboard, api_keys) writes one without a line of
-- its own, and a kill -9 between COMMIT and PUBLISH can't lose it. Delivered
-- by the control planes' relay (controlplane/invalidate.c), like the
-- geography databases' outbox (schema/geo/008).
CREATE TABLE invalidation_outbox (
    id               bigserial PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('device', 'tenant', 'apikey')),
    tenant_id        text,
    subject          text NOT NULL,   -- tenant id or key id
    created_at       timestamptz NOT NULL DEFAULT now(),
    claimed_until    timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE INDEX invalidation_outbox_claim_idx ON invalidation_outbox (claimed_until, id);

-- "tenant <id>": tenants names it by id, installer_tokens and tenant_cas by
-- tenant_id (two functions: PL/pgSQL can't name a column a table lacks).
CREATE FUNCTION cp_tenant_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t text := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
BEGIN
    INSERT INTO invalidation_outbox (kind, tenant_id, subject) VALUES ('tenant', t, t);
    RETURN NULL;
END $$;

CREATE FUNCTION cp_tenant_part_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t text := CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END;
BEGIN
    INSERT INTO invalidation_outbox (kind, tenant_id, subject) VALUES ('tenant', t, t);
    RETURN NULL;
END $$;

CREATE FUNCTION cp_apikey_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO invalidation_outbox (kind, subject) VALUES ('apikey', CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
    RETURN NULL;
END $$;

CREATE TRIGGER tenants_invalidation_outbox AFTER UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION cp_tenant_outbox();
CREATE TRIGGER installer_tokens_invalidation_outbox AFTER INSERT OR DELETE ON installer_tokens
    FOR EACH ROW EXECUTE FUNCTION cp_tenant_part_outbox();
-- A placement counted or given back (placements +/- 1, every installer
-- placement) changes nothing a control plane caches: no invalidation, or a
-- busy installer would keep its tenant's cache empty everywhere.
CREATE TRIGGER installer_tokens_update_invalidation_outbox AFTER UPDATE ON installer_tokens
    FOR EACH ROW WHEN ((to_jsonb(OLD) - 'placements') IS DISTINCT FROM (to_jsonb(NEW) - 'placements'))
    EXECUTE FUNCTION cp_tenant_part_outbox();
CREATE TRIGGER tenant_cas_invalidation_outbox AFTER INSERT OR UPDATE OR DELETE ON tenant_cas
    FOR EACH ROW EXECUTE FUNCTION cp_tenant_part_outbox();
CREATE TRIGGER api_keys_invalidation_outbox AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION cp_apikey_outbox();
