-- 009_shard_naps: taking a registration never waits on a usage shard lock.
--
-- 006 ordered the waits (a transaction waited only for a shard above every
-- shard it held), but a deadlock was still seen while a DPS filled under two
-- routers (test_assign_fill, pg_stat_database.deadlocks 0 -> 1, and the
-- 1 s deadlock_timeout in the p99). The order can't be kept: a SELECT ... FOR
-- UPDATE [SKIP LOCKED] that meets a row updated since its snapshot locks the
-- newest version and then re-checks the WHERE; a shard that filled meanwhile
-- fails the re-check and is not returned, but stays locked until commit. A
-- transaction can so hold a shard it never chose, out of order. And a waiter
-- can queue behind a holder whose uncommitted update has already filled the
-- shard its snapshot still shows with room.
--
-- So takers never block on a shard: they take shards with room that nobody
-- holds (FOR UPDATE SKIP LOCKED); while every shard with room is held, they
-- nap (1 ms, growing to 10 ms) and look again, with a new snapshot each time;
-- when no shard has room, the DPS is full. The statement_timeout of the
-- connection (db.statementTimeoutMs) bounds the naps. What still waits on a
-- shard lock - a release or a move giving back the old shard, a batch giving
-- back a shard it took - holds no shard a taker waits for (takers wait for
-- nobody), so no cycle can form.
--
-- Only a taker that holds no shard of the DPS naps: a single assignment
-- (cp_take_usage) before it took one, a batch before its first. A batch that
-- holds one and needs more answers the rest 'busy' (the router assigns each
-- alone) instead: two batches that each filled a shard (uncommitted) and
-- need more would otherwise nap on each other's until statement_timeout. So
-- whoever a napper waits for is not napping, and commits. Batches take the
-- DPS instances in order, so one that holds an earlier DPS's shard and naps
-- on a later one waits for nobody who waits for it.
--
-- And the common case is one index probe: the device's own shard first,
-- before the scan of all 16 (006 scanned them for every assignment, which
-- showed in the first-provision benchmark).

-- Is there a shard of p_dps with room, other than p_held?
CREATE FUNCTION cp_usage_room(p_dps text, p_max bigint, p_held int[]) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM dps_usage_shards u
                    WHERE u.dps_id = p_dps AND u.registrations < cp_shard_quota(p_max, u.shard)
                      AND u.shard <> ALL (p_held))
$$;

-- The n-th nap while every shard with room is held: 1 ms growing to 10 ms.
CREATE FUNCTION cp_usage_nap(n int) RETURNS void LANGUAGE sql AS $$
    SELECT pg_sleep(least(n, 10) / 1000.0)
$$;

-- Take one registration of p_dps. Returns the shard, or NULL when every shard
-- is full.
CREATE OR REPLACE FUNCTION cp_take_usage(p_dps text, p_stamp text, p_max bigint, p_start int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    s int;
    naps int := 0;
BEGIN
    -- the device's own shard: one index probe
    SELECT u.shard INTO s FROM dps_usage_shards u
     WHERE u.dps_id = p_dps AND u.shard = p_start AND u.registrations < cp_shard_quota(p_max, p_start)
     FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        PERFORM cp_usage_init(p_dps, p_stamp);
        LOOP
            -- a shard with room that nobody holds, nearest the device's own
            SELECT u.shard INTO s FROM dps_usage_shards u
             WHERE u.dps_id = p_dps AND u.registrations < cp_shard_quota(p_max, u.shard)
             ORDER BY (u.shard - p_start + 16) % 16 LIMIT 1 FOR UPDATE SKIP LOCKED;
            EXIT WHEN FOUND;
            IF NOT cp_usage_room(p_dps, p_max, '{}') THEN
                RETURN NULL;
            END IF;
            naps := naps + 1;
            PERFORM cp_usage_nap(naps);
        END LOOP;
    END IF;
    UPDATE dps_usage_shards SET registrations = registrations + 1 WHERE dps_id = p_dps AND shard = s;
    RETURN s;
END $$;

-- cp_assign_devices (006) with step 2 taking usage as above: 'busy' now
-- means "this batch held a shard and would have had to nap".
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
    naps int;
    leftover text;
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

    -- 2. Usage, per DPS in DPS order: shards with room that nobody holds
    -- (SKIP LOCKED, from the first item's own shard on); while every shard
    -- with room is held by others, nap and look again if holding none of
    -- this DPS (never wait on a lock: see the top of this file), else what
    -- is left is 'busy'; what is left when no shard has room is 'dps_full'.
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
        naps := 0;
        leftover := 'dps_full';
        WHILE need > 0 LOOP
            SELECT u.shard, u.registrations INTO s, have FROM dps_usage_shards u
             WHERE u.dps_id = r.dps AND u.registrations < cp_shard_quota(r.mx, u.shard)
               AND u.shard <> ALL (held)
             ORDER BY (u.shard - r.start + 16) % 16 LIMIT 1 FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                EXIT WHEN NOT cp_usage_room(r.dps, r.mx, held);
                -- Holding a shard of this DPS, never nap: another batch may
                -- nap on ours while we nap on its (both full only in their
                -- uncommitted updates). The rest go 'busy' (the router
                -- assigns each alone, holding nothing while it naps).
                IF cardinality(held) > 0 THEN
                    leftover := 'busy';
                    EXIT;
                END IF;
                naps := naps + 1;
                PERFORM cp_usage_nap(naps);
                CONTINUE;
            END IF;
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
        WHILE k <= array_length(r.items, 1) LOOP
            res[r.items[k]] := leftover;
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
