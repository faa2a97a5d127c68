-- 011_jobs: long-running work as resources (GET /v1/jobs/{id}), tenant
-- offboarding, and dedicated tenancy enforced.
--
-- A job is claimed by one control plane instance at a time through a lease
-- (lease_owner, lease_until): any instance may run it, and one whose
-- instance died is taken over once the lease has expired. Every step is
-- idempotent, so a step interrupted half-way is simply run again.
CREATE TABLE jobs (
    id           text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('tenant-offboard')),
    tenant_id    text NOT NULL REFERENCES tenants(id),
    state        text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    step         int NOT NULL DEFAULT 0,          -- index into steps of the step under way
    steps        jsonb NOT NULL,                  -- [{"name","state":"pending|running|done|failed"}]
    done         bigint NOT NULL DEFAULT 0,       -- progress (offboarding: devices released)
    total        bigint NOT NULL DEFAULT 0,
    errors       jsonb NOT NULL DEFAULT '[]',     -- [{"step","at","message"}], most recent last (at most 50)
    attempts     int NOT NULL DEFAULT 0,          -- failed tries of the current step
    lease_owner  text,
    lease_until  timestamptz,
    next_run_at  timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX jobs_runnable_idx ON jobs (next_run_at, created_at) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_tenant_idx ON jobs (tenant_id, created_at);
-- One offboarding at a time per tenant: a second DELETE ?cascade=true answers the job under way.
CREATE UNIQUE INDEX jobs_one_offboard_uidx ON jobs (tenant_id) WHERE kind = 'tenant-offboard' AND state IN ('queued', 'running');

-- Set when the offboarding job is created: from then on the tenant's devices
-- are refused, the reconciler removes its enrollment groups, and it cannot be
-- changed. deleted_at (the tombstone) follows when the job's last step ran.
ALTER TABLE tenants ADD COLUMN offboarding_at timestamptz;

-- Dedicated tenancy, enforced in the catalog itself so that two concurrent
-- requests cannot both win:
--  * a live tenant's dedicated stamps belong to it alone (SQLSTATE SC409,
--    message "stamp_not_exclusive:<stamp>");
--  * a stamp a live dedicated tenant lists stays dedicated (SC409,
--    "stamp_in_use:<tenant>").
-- Both take the stamps' row locks (FOR UPDATE / the UPDATE itself), so a
-- tenant insert and another tenant insert or a stamp PATCH naming the same
-- stamp run one after the other, the second seeing the first's commit
-- (READ COMMITTED: each statement of the function takes a fresh snapshot).
CREATE FUNCTION cp_tenant_dedicated_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s text;
    other text;
BEGIN
    IF NEW.tenancy <> 'dedicated' OR NEW.deleted_at IS NOT NULL OR cardinality(NEW.dedicated_stamps) = 0 THEN
        RETURN NEW;
    END IF;
    PERFORM 1 FROM stamps WHERE id = ANY(NEW.dedicated_stamps) ORDER BY id FOR UPDATE;
    FOREACH s IN ARRAY NEW.dedicated_stamps LOOP
        SELECT t.id INTO other FROM tenants t
         WHERE t.id <> NEW.id AND t.deleted_at IS NULL AND s = ANY(t.dedicated_stamps) LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SC409', MESSAGE = 'stamp_not_exclusive:' || s;
        END IF;
    END LOOP;
    RETURN NEW;
END $$;
CREATE TRIGGER tenants_dedicated_check BEFORE INSERT OR UPDATE OF dedicated_stamps, tenancy, deleted_at ON tenants
    FOR EACH ROW EXECUTE FUNCTION cp_tenant_dedicated_check();

CREATE FUNCTION cp_stamp_tenancy_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    other text;
BEGIN
    IF NEW.tenancy = OLD.tenancy THEN
        RETURN NEW;
    END IF;
    IF OLD.tenancy = 'dedicated' THEN
        SELECT t.id INTO other FROM tenants t
         WHERE t.deleted_at IS NULL AND OLD.id = ANY(t.dedicated_stamps) ORDER BY t.id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SC409', MESSAGE = 'stamp_in_use:' || other;
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER stamps_tenancy_check BEFORE UPDATE OF tenancy ON stamps
    FOR EACH ROW EXECUTE FUNCTION cp_stamp_tenancy_check();
