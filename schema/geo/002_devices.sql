-- 002_devices: where each device of this geography is assigned, why, and what
-- happened to it before. Only devices placed in this geography are here; the
-- global catalog never sees a registration id.
-- API timestamps: RFC 3339 in UTC with milliseconds (as in the global catalog).
CREATE FUNCTION cp_ts(ts timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

CREATE TABLE devices (
    tenant_id        text NOT NULL,
    registration_id  text NOT NULL,
    status           text NOT NULL CHECK (status IN ('assigned', 'deprovisioned', 'retired')),
    region_id        text,
    stamp_id         text,
    dps_id           text,
    id_scope         text,
    dps_endpoint     text,
    assigned_at      timestamptz,
    etag             bigint NOT NULL DEFAULT 1,
    decision         jsonb,
    hub_host_name    text,      -- filled by proxy provisioning (approach 2)
    device_id        text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, registration_id),
    CHECK (status <> 'assigned' OR (stamp_id IS NOT NULL AND dps_id IS NOT NULL))
);
-- A DPS instance holds each registration id once: two tenants' devices with
-- the same registration id can never share a DPS instance.
CREATE UNIQUE INDEX devices_dps_registration_uidx ON devices (dps_id, registration_id)
    WHERE status = 'assigned';
CREATE INDEX devices_stamp_idx ON devices (stamp_id, tenant_id) WHERE status = 'assigned';
CREATE INDEX devices_tenant_status_idx ON devices (tenant_id, status, registration_id);

CREATE TABLE device_history (
    id               bigserial PRIMARY KEY,
    tenant_id        text NOT NULL,
    registration_id  text NOT NULL,
    at               timestamptz NOT NULL DEFAULT now(),
    event            text NOT NULL,   -- assigned, moved, deprovisioned, retired
    from_stamp       text,
    to_stamp         text,
    reason           text,
    decision         jsonb
);
CREATE INDEX device_history_device_idx ON device_history (tenant_id, registration_id, id);

-- Registrations held per DPS instance, kept exact by the functions below so
-- that the capacity check and the increment are one atomic step.
CREATE TABLE dps_usage (
    dps_id         text PRIMARY KEY,
    stamp_id       text NOT NULL,
    registrations  bigint NOT NULL DEFAULT 0 CHECK (registrations >= 0)
);

-- Place a device: returns the device row and an outcome word:
--   assigned     newly assigned now
--   existing     it already had an assignment (a concurrent first request won)
--   retired      it is retired; nothing changed
--   dps_full     the DPS is at p_max registrations; nothing changed
--   regid_taken  another tenant's device with this registration id is on the DPS
CREATE FUNCTION cp_assign_device(p_tenant text, p_reg text, p_region text, p_stamp text, p_dps text,
                                 p_scope text, p_endpoint text, p_max bigint, p_decision jsonb,
                                 p_reason text)
RETURNS TABLE (outcome text, dev devices) LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    used bigint;
BEGIN
    SELECT * INTO d FROM devices WHERE tenant_id = p_tenant AND registration_id = p_reg FOR UPDATE;
    IF FOUND AND d.status = 'assigned' THEN
        RETURN QUERY SELECT 'existing'::text, d; RETURN;
    ELSIF FOUND AND d.status = 'retired' THEN
        RETURN QUERY SELECT 'retired'::text, d; RETURN;
    END IF;
    INSERT INTO dps_usage (dps_id, stamp_id, registrations) VALUES (p_dps, p_stamp, 0)
        ON CONFLICT (dps_id) DO NOTHING;
    UPDATE dps_usage SET registrations = registrations + 1
        WHERE dps_id = p_dps AND registrations < p_max RETURNING registrations INTO used;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'dps_full'::text, NULL::devices; RETURN;
    END IF;
    BEGIN
        -- A concurrent first request for the same device may have inserted
        -- the row since the SELECT above (which locks nothing while there is
        -- no row): the conflict waits for it, and the WHERE leaves its
        -- assignment alone.
        INSERT INTO devices AS t (tenant_id, registration_id, status, region_id, stamp_id, dps_id,
                                  id_scope, dps_endpoint, assigned_at, etag, decision, updated_at)
        VALUES (p_tenant, p_reg, 'assigned', p_region, p_stamp, p_dps, p_scope, p_endpoint, now(),
                1, p_decision, now())
        ON CONFLICT (tenant_id, registration_id) DO UPDATE
            SET status = 'assigned', region_id = EXCLUDED.region_id, stamp_id = EXCLUDED.stamp_id,
                dps_id = EXCLUDED.dps_id, id_scope = EXCLUDED.id_scope,
                dps_endpoint = EXCLUDED.dps_endpoint, assigned_at = now(), etag = t.etag + 1,
                decision = EXCLUDED.decision, hub_host_name = NULL, device_id = NULL,
                updated_at = now()
            WHERE t.status = 'deprovisioned'
        RETURNING * INTO d;
    EXCEPTION WHEN unique_violation THEN
        -- the (dps_id, registration_id) index: undo the usage increment too
        UPDATE dps_usage SET registrations = registrations - 1 WHERE dps_id = p_dps;
        RETURN QUERY SELECT 'regid_taken'::text, NULL::devices; RETURN;
    END;
    IF NOT FOUND THEN
        -- the concurrent request won: its answer is ours too
        UPDATE dps_usage SET registrations = registrations - 1 WHERE dps_id = p_dps;
        SELECT * INTO d FROM devices WHERE tenant_id = p_tenant AND registration_id = p_reg;
        RETURN QUERY SELECT CASE WHEN d.status = 'retired' THEN 'retired' ELSE 'existing' END, d;
        RETURN;
    END IF;
    INSERT INTO device_history (tenant_id, registration_id, event, to_stamp, reason, decision)
        VALUES (p_tenant, p_reg, 'assigned', p_stamp, p_reason, p_decision);
    RETURN QUERY SELECT 'assigned'::text, d;
END $$;

-- Move an assigned device to another DPS (reprovision): same outcomes, plus
--   moved        moved now;  unchanged: p_etag no longer matches (someone else moved it)
CREATE FUNCTION cp_move_device(p_tenant text, p_reg text, p_etag bigint, p_region text,
                               p_stamp text, p_dps text, p_scope text, p_endpoint text,
                               p_max bigint, p_decision jsonb, p_reason text)
RETURNS TABLE (outcome text, dev devices) LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    old_stamp text;
BEGIN
    SELECT * INTO d FROM devices WHERE tenant_id = p_tenant AND registration_id = p_reg FOR UPDATE;
    IF NOT FOUND OR d.status <> 'assigned' OR d.etag <> p_etag THEN
        RETURN QUERY SELECT 'unchanged'::text, d; RETURN;
    END IF;
    old_stamp := d.stamp_id;
    INSERT INTO dps_usage (dps_id, stamp_id, registrations) VALUES (p_dps, p_stamp, 0)
        ON CONFLICT (dps_id) DO NOTHING;
    UPDATE dps_usage SET registrations = registrations + 1
        WHERE dps_id = p_dps AND registrations < p_max;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'dps_full'::text, NULL::devices; RETURN;
    END IF;
    UPDATE dps_usage SET registrations = registrations - 1 WHERE dps_id = d.dps_id;
    BEGIN
        UPDATE devices SET region_id = p_region, stamp_id = p_stamp, dps_id = p_dps,
                           id_scope = p_scope, dps_endpoint = p_endpoint, assigned_at = now(),
                           etag = etag + 1, decision = p_decision, hub_host_name = NULL,
                           device_id = NULL, updated_at = now()
            WHERE tenant_id = p_tenant AND registration_id = p_reg RETURNING * INTO d;
    EXCEPTION WHEN unique_violation THEN
        UPDATE dps_usage SET registrations = registrations - 1 WHERE dps_id = p_dps;
        UPDATE dps_usage SET registrations = registrations + 1 WHERE dps_id = d.dps_id;
        RETURN QUERY SELECT 'regid_taken'::text, NULL::devices; RETURN;
    END;
    INSERT INTO device_history (tenant_id, registration_id, event, from_stamp, to_stamp, reason, decision)
        VALUES (p_tenant, p_reg, 'moved', old_stamp, p_stamp, p_reason, p_decision);
    RETURN QUERY SELECT 'moved'::text, d;
END $$;

-- Deprovision (p_retire false) or retire (true) a device. Returns the row
-- after the change, or no row if the device is unknown.
CREATE FUNCTION cp_release_device(p_tenant text, p_reg text, p_retire boolean, p_reason text)
RETURNS SETOF devices LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    new_status text := CASE WHEN p_retire THEN 'retired' ELSE 'deprovisioned' END;
BEGIN
    SELECT * INTO d FROM devices WHERE tenant_id = p_tenant AND registration_id = p_reg FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF d.status = 'assigned' THEN
        UPDATE dps_usage SET registrations = registrations - 1 WHERE dps_id = d.dps_id;
    END IF;
    IF d.status <> new_status AND d.status <> 'retired' THEN
        UPDATE devices SET status = new_status, etag = etag + 1, updated_at = now()
            WHERE tenant_id = p_tenant AND registration_id = p_reg RETURNING * INTO d;
        INSERT INTO device_history (tenant_id, registration_id, event, from_stamp, reason)
            VALUES (p_tenant, p_reg, new_status, d.stamp_id, p_reason);
    END IF;
    RETURN NEXT d;
END $$;
