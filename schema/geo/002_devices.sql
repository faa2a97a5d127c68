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
    usage_shard      smallint,  -- the dps_usage_shards row this assignment counts in
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

-- Registrations held per DPS instance, counted in 16 shards. With one counter
-- row per DPS every first assignment on that DPS would wait for the previous
-- one's commit (the row lock is held through the WAL flush). Each shard holds
-- an exact share of the capacity (max/16, the remainder spread over the first
-- shards): the total can never exceed the limit, and assignments spread over
-- 16 rows commit in parallel. A device records its shard, so its release
-- decrements the right one.
CREATE TABLE dps_usage_shards (
    dps_id         text NOT NULL,
    shard          smallint NOT NULL CHECK (shard BETWEEN 0 AND 15),
    stamp_id       text NOT NULL,
    registrations  bigint NOT NULL DEFAULT 0 CHECK (registrations >= 0),
    PRIMARY KEY (dps_id, shard)
);
CREATE VIEW dps_usage AS
    SELECT dps_id, min(stamp_id) AS stamp_id, sum(registrations)::bigint AS registrations
      FROM dps_usage_shards GROUP BY dps_id;

-- The share of shard s of a capacity.
CREATE FUNCTION cp_shard_quota(p_max bigint, p_shard int) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT p_max / 16 + CASE WHEN p_shard < p_max % 16 THEN 1 ELSE 0 END
$$;

-- Take one registration of p_dps, starting at a shard chosen by the device
-- (spreads concurrent assignments) and moving on while shards are full.
-- Returns the shard, or NULL when the DPS is full.
CREATE FUNCTION cp_take_usage(p_dps text, p_stamp text, p_max bigint, p_start int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    s int;
BEGIN
    FOR i IN 0..15 LOOP
        s := (p_start + i) % 16;
        UPDATE dps_usage_shards SET registrations = registrations + 1
            WHERE dps_id = p_dps AND shard = s AND registrations < cp_shard_quota(p_max, s);
        IF FOUND THEN
            RETURN s;
        END IF;
        IF i = 0 AND NOT EXISTS (SELECT 1 FROM dps_usage_shards WHERE dps_id = p_dps) THEN
            INSERT INTO dps_usage_shards (dps_id, shard, stamp_id)
                SELECT p_dps, g, p_stamp FROM generate_series(0, 15) g
                ON CONFLICT DO NOTHING;
            UPDATE dps_usage_shards SET registrations = registrations + 1
                WHERE dps_id = p_dps AND shard = s AND registrations < cp_shard_quota(p_max, s);
            IF FOUND THEN
                RETURN s;
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

CREATE FUNCTION cp_give_usage(p_dps text, p_shard int) RETURNS void LANGUAGE sql AS $$
    UPDATE dps_usage_shards SET registrations = registrations - 1
     WHERE dps_id = p_dps AND shard = coalesce(p_shard, 0) AND registrations > 0
$$;

-- A registration id already held on the DPS by another tenant's device makes
-- the INSERT fail with unique_violation on devices_dps_registration_uidx: the
-- whole statement (usage increment included) is rolled back and the router
-- reads the constraint name and places again. No subtransaction per call.
-- Place a device: returns the device row and an outcome word:
--   assigned     newly assigned now
--   existing     it already had an assignment (a concurrent first request won)
--   retired      it is retired; nothing changed
--   dps_full     the DPS is at p_max registrations; nothing changed
CREATE FUNCTION cp_assign_device(p_tenant text, p_reg text, p_region text, p_stamp text, p_dps text,
                                 p_scope text, p_endpoint text, p_max bigint, p_decision jsonb,
                                 p_reason text)
RETURNS TABLE (outcome text, dev devices) LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    s int;
BEGIN
    SELECT * INTO d FROM devices WHERE tenant_id = p_tenant AND registration_id = p_reg FOR UPDATE;
    IF FOUND AND d.status = 'assigned' THEN
        RETURN QUERY SELECT 'existing'::text, d; RETURN;
    ELSIF FOUND AND d.status = 'retired' THEN
        RETURN QUERY SELECT 'retired'::text, d; RETURN;
    END IF;
    s := cp_take_usage(p_dps, p_stamp, p_max, abs(hashtext(p_tenant || '/' || p_reg)) % 16);
    IF s IS NULL THEN
        RETURN QUERY SELECT 'dps_full'::text, NULL::devices; RETURN;
    END IF;
    -- A concurrent first request for the same device may have inserted the
    -- row since the SELECT above (which locks nothing while there is no row):
    -- the conflict waits for it, and the WHERE leaves its assignment alone.
    INSERT INTO devices AS t (tenant_id, registration_id, status, region_id, stamp_id, dps_id,
                              id_scope, dps_endpoint, assigned_at, etag, decision, updated_at, usage_shard)
    VALUES (p_tenant, p_reg, 'assigned', p_region, p_stamp, p_dps, p_scope, p_endpoint, now(),
            1, p_decision, now(), s)
    ON CONFLICT (tenant_id, registration_id) DO UPDATE
        SET status = 'assigned', region_id = EXCLUDED.region_id, stamp_id = EXCLUDED.stamp_id,
            dps_id = EXCLUDED.dps_id, id_scope = EXCLUDED.id_scope,
            dps_endpoint = EXCLUDED.dps_endpoint, assigned_at = now(), etag = t.etag + 1,
            decision = EXCLUDED.decision, hub_host_name = NULL, device_id = NULL,
            updated_at = now(), usage_shard = EXCLUDED.usage_shard
        WHERE t.status = 'deprovisioned'
    RETURNING * INTO d;
    IF NOT FOUND THEN
        -- the concurrent request won: its answer is ours too
        PERFORM cp_give_usage(p_dps, s);
        SELECT * INTO d FROM devices WHERE tenant_id = p_tenant AND registration_id = p_reg;
        RETURN QUERY SELECT CASE WHEN d.status = 'retired' THEN 'retired' ELSE 'existing' END, d;
        RETURN;
    END IF;
    -- The decision record is on the device row; history keeps the event
    -- (writing the record twice doubled every first assignment's WAL).
    INSERT INTO device_history (tenant_id, registration_id, event, to_stamp, reason)
        VALUES (p_tenant, p_reg, 'assigned', p_stamp, p_reason);
    RETURN QUERY SELECT 'assigned'::text, d;
END $$;

-- Move an assigned device to another DPS (reprovision): the same outcomes, plus
--   moved        moved now;  unchanged: p_etag no longer matches (someone else moved it)
CREATE FUNCTION cp_move_device(p_tenant text, p_reg text, p_etag bigint, p_region text,
                               p_stamp text, p_dps text, p_scope text, p_endpoint text,
                               p_max bigint, p_decision jsonb, p_reason text)
RETURNS TABLE (outcome text, dev devices) LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    old_stamp text;
    s int;
BEGIN
    SELECT * INTO d FROM devices WHERE tenant_id = p_tenant AND registration_id = p_reg FOR UPDATE;
    IF NOT FOUND OR d.status <> 'assigned' OR d.etag <> p_etag THEN
        RETURN QUERY SELECT 'unchanged'::text, d; RETURN;
    END IF;
    old_stamp := d.stamp_id;
    s := cp_take_usage(p_dps, p_stamp, p_max, abs(hashtext(p_tenant || '/' || p_reg)) % 16);
    IF s IS NULL THEN
        RETURN QUERY SELECT 'dps_full'::text, NULL::devices; RETURN;
    END IF;
    PERFORM cp_give_usage(d.dps_id, d.usage_shard);
    UPDATE devices SET region_id = p_region, stamp_id = p_stamp, dps_id = p_dps,
                       id_scope = p_scope, dps_endpoint = p_endpoint, assigned_at = now(),
                       etag = etag + 1, decision = p_decision, hub_host_name = NULL,
                       device_id = NULL, updated_at = now(), usage_shard = s
        WHERE tenant_id = p_tenant AND registration_id = p_reg RETURNING * INTO d;
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
        PERFORM cp_give_usage(d.dps_id, d.usage_shard);
    END IF;
    IF d.status <> new_status AND d.status <> 'retired' THEN
        UPDATE devices SET status = new_status, etag = etag + 1, updated_at = now()
            WHERE tenant_id = p_tenant AND registration_id = p_reg RETURNING * INTO d;
        INSERT INTO device_history (tenant_id, registration_id, event, from_stamp, reason)
            VALUES (p_tenant, p_reg, new_status, d.stamp_id, p_reason);
    END IF;
    RETURN NEXT d;
END $$;
