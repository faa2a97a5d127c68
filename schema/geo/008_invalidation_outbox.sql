-- Cache invalidations written in the same transaction as the change they
-- announce (issue 14, finding 8). A trigger on devices, not a line in each
-- SQL function, so that every statement that moves, releases or retires a
-- device - today's functions, their replacements, a manual UPDATE - writes
-- one, and a kill -9 between COMMIT and PUBLISH can't lose it. The control
-- planes' relay (controlplane/invalidate.c) claims rows with a lease
-- (claimed_until; several relays run), publishes them on cp:invalidate and
-- deletes them. Rows name the registration id: the relay turns it into the
-- keyed pseudonym, which the database never learns.
CREATE TABLE invalidation_outbox (
    id               bigserial PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('device', 'tenant', 'apikey')),
    tenant_id        text,
    subject          text NOT NULL,   -- registration id, tenant id or key id
    created_at       timestamptz NOT NULL DEFAULT now(),
    claimed_until    timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE INDEX invalidation_outbox_claim_idx ON invalidation_outbox (claimed_until, id);

-- Only what a cached answer shows: a first assignment (INSERT) has nothing
-- cached to invalidate, and the hub columns filled by approach 2 are not
-- part of a locate answer.
CREATE FUNCTION cp_device_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO invalidation_outbox (kind, tenant_id, subject) VALUES ('device', OLD.tenant_id, OLD.registration_id);
        RETURN OLD;
    END IF;
    IF (OLD.status, OLD.region_id, OLD.stamp_id, OLD.dps_id, OLD.id_scope, OLD.dps_endpoint, OLD.etag)
       IS DISTINCT FROM
       (NEW.status, NEW.region_id, NEW.stamp_id, NEW.dps_id, NEW.id_scope, NEW.dps_endpoint, NEW.etag) THEN
        INSERT INTO invalidation_outbox (kind, tenant_id, subject) VALUES ('device', NEW.tenant_id, NEW.registration_id);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER devices_invalidation_outbox AFTER UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION cp_device_outbox();
