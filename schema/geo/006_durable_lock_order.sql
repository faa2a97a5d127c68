-- 006_durable_lock_order: two promises the assignment functions now keep
-- themselves, instead of leaving them to server settings and luck.
--
-- 1. Durability. Every function whose answer the router acknowledges
--    (cp_assign_device, cp_assign_devices, cp_move_device,
--    cp_release_device) sets synchronous_commit = on for its own transaction
--    (set_config(..., true), i.e. SET LOCAL): with a synchronous standby, a
--    200 means the change is on both servers, whatever the server's,
--    database's or role's default says. A function's SET clause would not
--    do: it is undone when the function returns, before the commit.
--
-- 2. Lock order: no deadlock when a DPS fills. Usage shard rows are locked in
--    one global order, (dps_id, shard), and a transaction only ever WAITS for
--    a shard above every shard it holds:
--    - a registration is first taken FOR UPDATE SKIP LOCKED among the shards
--      with room, starting at the device's own shard: this never waits, so
--      its order doesn't matter, and a full shard is never locked;
--    - only when every shard with room is held by others does an assignment
--      wait, for the lowest such shard (cp_take_usage: holding no other shard
--      of that DPS); a batch waits only for shards above those it holds, and
--      items it still can't serve answer 'busy' (the router runs them one by
--      one through cp_assign_device, which may wait);
--    - a move locks the old and the new DPS instance's shards in DPS order
--      (it took the new, then the old: two opposite moves deadlocked).
--    Device rows keep their place in the order: existing rows first, then
--    shards, then new rows (003).

-- Create a DPS instance's 16 shard rows the first time it is used.
CREATE FUNCTION cp_usage_init(p_dps text, p_stamp text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM dps_usage_shards WHERE dps_id = p_dps) THEN
        INSERT INTO dps_usage_shards (dps_id, shard, stamp_id)
            SELECT p_dps, g, p_stamp FROM generate_series(0, 15) g
            ON CONFLICT DO NOTHING;
    END IF;
END $$;

-- Take one registration of p_dps. Returns the shard, or NULL when every shard
-- is full. See 2. above for the order.
CREATE OR REPLACE FUNCTION cp_take_usage(p_dps text, p_stamp text, p_max bigint, p_start int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    s int;
BEGIN
    PERFORM cp_usage_init(p_dps, p_stamp);
    -- a shard with room that nobody holds, nearest the device's own
    SELECT u.shard INTO s FROM dps_usage_shards u
     WHERE u.dps_id = p_dps AND u.registrations < cp_shard_quota(p_max, u.shard)
     ORDER BY (u.shard - p_start + 16) % 16 LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        -- every shard with room is held: wait for the lowest (one order for
        -- all waiters); one that fills meanwhile is passed over after the wait
        SELECT u.shard INTO s FROM dps_usage_shards u
         WHERE u.dps_id = p_dps AND u.registrations < cp_shard_quota(p_max, u.shard)
         ORDER BY u.shard LIMIT 1 FOR UPDATE;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    UPDATE dps_usage_shards SET registrations = registrations + 1 WHERE dps_id = p_dps AND shard = s;
    RETURN s;
END $$;

-- Lock the usage shard a device counts in (before a move that releases it).
CREATE FUNCTION cp_lock_usage(p_dps text, p_shard int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM dps_usage_shards WHERE dps_id = p_dps AND shard = coalesce(p_shard, 0) FOR UPDATE;
END $$;

-- cp_assign_device (002), now durable by itself; otherwise unchanged (its
-- usage order is cp_take_usage's).
CREATE OR REPLACE FUNCTION cp_assign_device(p_tenant text, p_reg text, p_region text, p_stamp text, p_dps text,
                                            p_scope text, p_endpoint text, p_max bigint, p_decision jsonb,
                                            p_reason text)
RETURNS TABLE (outcome text, dev devices) LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    d devices;
    s int;
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
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
        -- a concurrent first request won: its answer is ours too
        PERFORM cp_give_usage(p_dps, s);
        SELECT * INTO d FROM devices WHERE tenant_id = p_tenant AND registration_id = p_reg;
        RETURN QUERY SELECT CASE WHEN d.status = 'retired' THEN 'retired' ELSE 'existing' END, d;
        RETURN;
    END IF;
    INSERT INTO device_history (tenant_id, registration_id, event, to_stamp, reason)
        VALUES (p_tenant, p_reg, 'assigned', p_stamp, p_reason);
    RETURN QUERY SELECT 'assigned'::text, d;
END $$;

-- cp_move_device (002): durable, and the two DPS instances' shards locked in
-- DPS order (the old one's first when it sorts first).
CREATE OR REPLACE FUNCTION cp_move_device(p_tenant text, p_reg text, p_etag bigint, p_region text,
                                          p_stamp text, p_dps text, p_scope text, p_endpoint text,
                                          p_max bigint, p_decision jsonb, p_reason text)
RETURNS TABLE (outcome text, dev devices) LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    old_stamp text;
    s int;
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
    SELECT * INTO d FROM devices WHERE tenant_id = p_tenant AND registration_id = p_reg FOR UPDATE;
    IF NOT FOUND OR d.status <> 'assigned' OR d.etag <> p_etag THEN
        RETURN QUERY SELECT 'unchanged'::text, d; RETURN;
    END IF;
    old_stamp := d.stamp_id;
    IF d.dps_id < p_dps THEN
        PERFORM cp_lock_usage(d.dps_id, d.usage_shard);
    END IF;
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

-- cp_release_device (002), durable.
CREATE OR REPLACE FUNCTION cp_release_device(p_tenant text, p_reg text, p_retire boolean, p_reason text)
RETURNS SETOF devices LANGUAGE plpgsql AS $$
DECLARE
    d devices;
    new_status text := CASE WHEN p_retire THEN 'retired' ELSE 'deprovisioned' END;
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
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

-- cp_assign_devices (003): durable, and usage taken per 2. above. New
-- outcome for an item:
--   busy   every shard with room was held by another transaction and this
--          batch may not wait for it; nothing changed for this item (the
--          router assigns it alone, through cp_assign_device)
CREATE OR REPLACE FUNCTION cp_assign_devices(p_tenant text[], p_reg text[], p_region text[], p_stamp text[],
                                             p_dps text[], p_scope text[], p_endpoint text[], p_max text[],
                                             p_decision text[], p_reason text[])
RETURNS TABLE (ord int, outcome text, dev devices) LANGUAGE plpgsql SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    n int := coalesce(array_length(p_tenant, 1), 0);
    res text[] := array_fill(NULL::text, ARRAY[n]);   -- outcome of each item
    rep_of int[] := array_fill(NULL::int, ARRAY[n]);   -- an earlier item with the same device
    shard_of int[] := array_fill(NULL::int, ARRAY[n]);   -- the usage shard an item counts in
    done int[];
    r record;
    i int;
    st text;
    need int;
    k int;
    s int;
    have bigint;
    take bigint;
    held int[];
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
    -- Repeats of one device within the batch follow its first item.
    FOR r IN SELECT q.i, q.f FROM (SELECT g.i, min(g.i) OVER (PARTITION BY p_tenant[g.i], p_reg[g.i]) AS f
                                     FROM generate_subscripts(p_tenant, 1) AS g(i)) q
              WHERE q.f <> q.i LOOP
        rep_of[r.i] := r.f;
    END LOOP;

    -- 1. Devices with a row: lock it; assigned or retired ones are answered
    -- as they are (one index probe per item).
    FOR i IN SELECT g.i FROM generate_subscripts(p_tenant, 1) AS g(i)
              WHERE rep_of[g.i] IS NULL ORDER BY p_tenant[g.i], p_reg[g.i] LOOP
        SELECT t.status INTO st FROM devices t
         WHERE t.tenant_id = p_tenant[i] AND t.registration_id = p_reg[i] FOR UPDATE;
        IF FOUND AND st = 'assigned' THEN
            res[i] := 'existing';
        ELSIF FOUND AND st = 'retired' THEN
            res[i] := 'retired';
        ELSIF EXISTS (SELECT 1 FROM devices t
                       WHERE t.dps_id = p_dps[i] AND t.registration_id = p_reg[i]
                         AND t.status = 'assigned' AND t.tenant_id <> p_tenant[i]) THEN
            res[i] := 'regid_taken';
        END IF;
    END LOOP;

    -- 2. Usage, per DPS in DPS order: first from shards with room nobody
    -- holds (SKIP LOCKED, from the first item's own shard on), then waiting
    -- only for shards above the highest one held; what is left is 'busy' if
    -- some shard still had room, else 'dps_full'.
    FOR r IN SELECT p_dps[g.i] AS dps, min(p_stamp[g.i]) AS stamp, min(p_max[g.i]::bigint) AS mx,
                    array_agg(g.i ORDER BY g.i) AS items,
                    (array_agg(abs(hashtext(p_tenant[g.i] || '/' || p_reg[g.i])) % 16 ORDER BY g.i))[1] AS start
               FROM generate_subscripts(p_tenant, 1) AS g(i)
              WHERE rep_of[g.i] IS NULL AND res[g.i] IS NULL
              GROUP BY 1 ORDER BY 1 LOOP
        PERFORM cp_usage_init(r.dps, r.stamp);
        need := array_length(r.items, 1);
        k := 1;
        held := '{}';
        FOR pass IN 1..2 LOOP
            WHILE need > 0 LOOP
                IF pass = 1 THEN
                    SELECT u.shard, u.registrations INTO s, have FROM dps_usage_shards u
                     WHERE u.dps_id = r.dps AND u.registrations < cp_shard_quota(r.mx, u.shard)
                       AND u.shard <> ALL (held)
                     ORDER BY (u.shard - r.start + 16) % 16 LIMIT 1 FOR UPDATE SKIP LOCKED;
                ELSE
                    SELECT u.shard, u.registrations INTO s, have FROM dps_usage_shards u
                     WHERE u.dps_id = r.dps AND u.registrations < cp_shard_quota(r.mx, u.shard)
                       AND u.shard > coalesce((SELECT max(h) FROM unnest(held) h), -1)
                     ORDER BY u.shard LIMIT 1 FOR UPDATE;
                END IF;
                EXIT WHEN NOT FOUND;
                held := held || s;
                take := least(need, cp_shard_quota(r.mx, s) - have);
                UPDATE dps_usage_shards u SET registrations = have + take
                 WHERE u.dps_id = r.dps AND u.shard = s;
                FOR m IN 1..take LOOP
                    shard_of[r.items[k]] := s;
                    k := k + 1;
                END LOOP;
                need := need - take;
            END LOOP;
        END LOOP;
        IF need > 0 THEN
            st := CASE WHEN EXISTS (SELECT 1 FROM dps_usage_shards u
                                     WHERE u.dps_id = r.dps AND u.registrations < cp_shard_quota(r.mx, u.shard)
                                       AND u.shard <> ALL (held))
                       THEN 'busy' ELSE 'dps_full' END;
            WHILE k <= array_length(r.items, 1) LOOP
                res[r.items[k]] := st;
                k := k + 1;
            END LOOP;
        END IF;
    END LOOP;

    -- 3. The device rows. A row a concurrent request inserted since step 1
    -- makes the conflict wait for it, and the WHERE leaves its assignment alone.
    WITH ins AS (
        INSERT INTO devices AS t (tenant_id, registration_id, status, region_id, stamp_id, dps_id,
                                  id_scope, dps_endpoint, assigned_at, etag, decision, updated_at, usage_shard)
        SELECT p_tenant[g.i], p_reg[g.i], 'assigned', p_region[g.i], p_stamp[g.i], p_dps[g.i], p_scope[g.i],
               p_endpoint[g.i], now(), 1, p_decision[g.i]::jsonb, now(), shard_of[g.i]
          FROM generate_subscripts(p_tenant, 1) AS g(i)
         WHERE rep_of[g.i] IS NULL AND res[g.i] IS NULL AND shard_of[g.i] IS NOT NULL
         ORDER BY p_tenant[g.i], p_reg[g.i]
        ON CONFLICT (tenant_id, registration_id) DO UPDATE
            SET status = 'assigned', region_id = EXCLUDED.region_id, stamp_id = EXCLUDED.stamp_id,
                dps_id = EXCLUDED.dps_id, id_scope = EXCLUDED.id_scope,
                dps_endpoint = EXCLUDED.dps_endpoint, assigned_at = now(), etag = t.etag + 1,
                decision = EXCLUDED.decision, hub_host_name = NULL, device_id = NULL,
                updated_at = now(), usage_shard = EXCLUDED.usage_shard
            WHERE t.status = 'deprovisioned'
        RETURNING t.tenant_id, t.registration_id)
    SELECT array_agg(g.i) INTO done
      FROM ins JOIN generate_subscripts(p_tenant, 1) AS g(i)
        ON p_tenant[g.i] = ins.tenant_id AND p_reg[g.i] = ins.registration_id AND rep_of[g.i] IS NULL;
    FOR r IN SELECT g.i FROM generate_subscripts(p_tenant, 1) AS g(i)
              WHERE rep_of[g.i] IS NULL AND res[g.i] IS NULL AND shard_of[g.i] IS NOT NULL LOOP
        IF r.i = ANY (done) THEN
            res[r.i] := 'assigned';
        ELSE
            -- the concurrent request won: its answer is ours too
            PERFORM cp_give_usage(p_dps[r.i], shard_of[r.i]);
            res[r.i] := CASE WHEN (SELECT t.status FROM devices t WHERE t.tenant_id = p_tenant[r.i]
                                     AND t.registration_id = p_reg[r.i]) = 'retired'
                             THEN 'retired' ELSE 'existing' END;
        END IF;
    END LOOP;
    INSERT INTO device_history (tenant_id, registration_id, event, to_stamp, reason)
        SELECT p_tenant[i], p_reg[i], 'assigned', p_stamp[i], p_reason[i] FROM unnest(done) AS i ORDER BY i;

    FOR i IN 1..n LOOP
        ord := i;
        outcome := CASE WHEN rep_of[i] IS NULL THEN res[i]
                        WHEN res[rep_of[i]] = 'assigned' THEN 'existing'
                        ELSE res[rep_of[i]] END;
        dev := NULL;
        IF outcome IN ('assigned', 'existing', 'retired') THEN
            SELECT * INTO dev FROM devices t WHERE t.tenant_id = p_tenant[i] AND t.registration_id = p_reg[i];
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
