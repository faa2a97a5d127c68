-- 003_assign_batch: first assignments of many devices in one statement (the
-- router's natural batching, docs/architecture.md "Batching"). Parse, plan,
-- round trip and commit are paid once per batch instead of once per device,
-- and each DPS's usage is taken once per batch (one shard row update for all
-- of the batch's devices on that DPS, where cp_assign_device updates one per
-- device).
--
-- Item i is (p_tenant[i], p_reg[i], ...), with the arguments of
-- cp_assign_device; p_max and p_decision are text (bigint and jsonb). Returns
-- one row per item: its ordinal i, the outcome word and the device row, with
-- the outcomes of cp_assign_device, plus
--   regid_taken  another tenant's device holds this registration id on the
--                DPS; nothing changed for this item (the router places it again)
-- An item repeating an earlier item's device gets that item's outcome
-- ('existing' where the earlier one was 'assigned'): one assignment.
--
-- Locks are taken in phases, each in one global order: existing device rows
-- (by tenant, registration id), then usage shards (by DPS, then from a
-- starting shard upwards), then new device rows (by tenant, registration id).
-- Concurrent batches therefore don't wait on each other in a cycle, except
-- when full shards make two batches wrap around the same DPS's shards: the
-- deadlock is detected by PostgreSQL. That error, like any other (e.g. a
-- registration id taken by another tenant between the check below and the
-- insert), aborts the whole batch, nothing of it is written, and the router
-- runs the batch's items one by one through cp_assign_device.
CREATE FUNCTION cp_assign_devices(p_tenant text[], p_reg text[], p_region text[], p_stamp text[],
                                  p_dps text[], p_scope text[], p_endpoint text[], p_max text[],
                                  p_decision text[], p_reason text[])
RETURNS TABLE (ord int, outcome text, dev devices) LANGUAGE plpgsql AS $$
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
BEGIN
    -- Repeats of one device within the batch follow its first item.
    FOR r IN SELECT q.i, q.f FROM (SELECT g.i, min(g.i) OVER (PARTITION BY p_tenant[g.i], p_reg[g.i]) AS f
                                     FROM generate_subscripts(p_tenant, 1) AS g(i)) q
              WHERE q.f <> q.i LOOP
        rep_of[r.i] := r.f;
    END LOOP;

    -- 1. Devices with a row: lock it; assigned or retired ones are answered
    -- as they are. (One index probe per item: a join would let the planner
    -- hash the whole devices table.)
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

    -- 2. Usage: per DPS, the items' registrations from as few shards as
    -- possible, starting at the shard chosen by the first item's device.
    FOR r IN SELECT p_dps[g.i] AS dps, min(p_stamp[g.i]) AS stamp, min(p_max[g.i]::bigint) AS mx,
                    array_agg(g.i ORDER BY g.i) AS items,
                    (array_agg(abs(hashtext(p_tenant[g.i] || '/' || p_reg[g.i])) % 16 ORDER BY g.i))[1] AS start
               FROM generate_subscripts(p_tenant, 1) AS g(i)
              WHERE rep_of[g.i] IS NULL AND res[g.i] IS NULL
              GROUP BY 1 ORDER BY 1 LOOP
        need := array_length(r.items, 1);
        k := 1;
        FOR j IN 0..15 LOOP
            EXIT WHEN need = 0;
            s := (r.start + j) % 16;
            SELECT u.registrations INTO have FROM dps_usage_shards u
             WHERE u.dps_id = r.dps AND u.shard = s FOR UPDATE;
            IF NOT FOUND THEN
                INSERT INTO dps_usage_shards (dps_id, shard, stamp_id)
                    SELECT r.dps, g, r.stamp FROM generate_series(0, 15) g
                    ON CONFLICT DO NOTHING;
                SELECT u.registrations INTO have FROM dps_usage_shards u
                 WHERE u.dps_id = r.dps AND u.shard = s FOR UPDATE;
            END IF;
            take := least(need, cp_shard_quota(r.mx, s) - have);
            IF take > 0 THEN
                UPDATE dps_usage_shards u SET registrations = have + take
                 WHERE u.dps_id = r.dps AND u.shard = s;
                FOR m IN 1..take LOOP
                    shard_of[r.items[k]] := s;
                    k := k + 1;
                END LOOP;
                need := need - take;
            END IF;
        END LOOP;
        WHILE k <= array_length(r.items, 1) LOOP
            res[r.items[k]] := 'dps_full';
            k := k + 1;
        END LOOP;
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

-- Indexes no query needs (tenant listings and counts use the primary key or
-- scan; device probes use the primary key and devices_dps_registration_uidx).
-- Each cost every first assignment an index insert, and while the table had
-- no statistics yet, the planner could pick them for a probe by
-- (tenant, registration id) or (DPS, registration id) – a scan of a whole
-- tenant or stamp, cached for the connection's life in a plpgsql plan.
DROP INDEX devices_tenant_status_idx;
DROP INDEX devices_stamp_idx;
-- Plans cached in these functions are made once per connection, possibly
-- while the table is still nearly empty and a sequential scan looks as cheap
-- as the index: never let that plan stay once the table has grown.
ALTER FUNCTION cp_assign_devices(text[], text[], text[], text[], text[], text[], text[], text[], text[], text[])
    SET enable_seqscan = off;
ALTER FUNCTION cp_assign_device(text, text, text, text, text, text, text, bigint, jsonb, text)
    SET enable_seqscan = off;
