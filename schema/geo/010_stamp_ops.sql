-- 010_stamp_ops: the stamp-operation outbox (issue 11). A device change that
-- must reach the device's stamp - deprovision (delete its DPS registration
-- and hub identity), retire (a disabled individual enrollment, the hub
-- identity disabled), a move (the old stamp's registration removed once the
-- device registered at the new one) - writes one row here in the SAME
-- transaction, through a trigger on devices (as schema/geo/008 does for cache
-- invalidations): every statement that changes a device writes it, and a
-- kill -9 after the COMMIT can't lose it. The control planes' delivery worker
-- (controlplane/stamp_ops.c) claims rows with a lease (claimed_until,
-- claim_token; several routers run one each), never an op while an earlier
-- op of the same device is still here (in order per device), delivers it
-- through the DPS instance's service API and the hub registry, and deletes
-- it (cp_stamp_op_done, which writes the device_history event), or puts it
-- back with a backoff (cp_stamp_op_retry). A row here is undelivered.
CREATE TABLE stamp_ops (
    id               bigserial PRIMARY KEY,
    tenant_id        text NOT NULL,
    registration_id  text NOT NULL,
    op               text NOT NULL CHECK (op IN ('deprovision', 'retire', 'remove_moved')),
    dps_id           text NOT NULL,   -- the DPS instance acted on
    stamp_id         text,
    new_dps_id       text,            -- remove_moved: where the device went
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_at          timestamptz NOT NULL DEFAULT now(),   -- not tried before (backoff)
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    claimed_until    timestamptz NOT NULL DEFAULT '-infinity',
    claim_token      text,            -- the holder of the lease (a late holder changes nothing)
    CHECK (op <> 'remove_moved' OR new_dps_id IS NOT NULL)
);
CREATE INDEX stamp_ops_device_idx ON stamp_ops (tenant_id, registration_id, id);
CREATE INDEX stamp_ops_due_idx ON stamp_ops (next_at, id);
CREATE INDEX stamp_ops_dps_idx ON stamp_ops (dps_id, created_at);

-- Enqueue one op by hand (the drift repair: op 'deprovision', reason
-- 'orphan'). Nothing (NULL) when an undelivered op for the same device, op
-- and DPS instance is already here: it will do the same work, later than
-- anything that preceded this call. The advisory lock makes two concurrent
-- calls for one device see each other.
CREATE FUNCTION cp_stamp_op_enqueue(p_tenant text, p_reg text, p_op text, p_dps text, p_stamp text,
                                    p_reason text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN cp_stamp_op_add(p_tenant, p_reg, p_op, p_dps, p_stamp, NULL, p_reason);
END $$;

CREATE FUNCTION cp_stamp_op_add(p_tenant text, p_reg text, p_op text, p_dps text, p_stamp text,
                                p_new_dps text, p_reason text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
BEGIN
    IF p_dps IS NULL THEN
        RETURN NULL;   -- never placed on a DPS instance: nothing at any stamp
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('stamp_ops'), hashtext(p_tenant || '/' || p_reg));
    IF EXISTS (SELECT 1 FROM stamp_ops WHERE tenant_id = p_tenant AND registration_id = p_reg
                  AND op = p_op AND dps_id = p_dps) THEN
        RETURN NULL;
    END IF;
    INSERT INTO stamp_ops (tenant_id, registration_id, op, dps_id, stamp_id, new_dps_id, reason)
        VALUES (p_tenant, p_reg, p_op, p_dps, p_stamp, p_new_dps, p_reason)
        RETURNING id INTO v;
    RETURN v;
END $$;

-- The op each device change implies, at the DPS instance the device leaves.
CREATE FUNCTION cp_device_stamp_ops() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'assigned' AND NEW.status = 'deprovisioned' THEN
        PERFORM cp_stamp_op_add(NEW.tenant_id, NEW.registration_id, 'deprovision', OLD.dps_id, OLD.stamp_id,
                                NULL, 'deprovisioned');
    ELSIF NEW.status = 'retired' AND OLD.status <> 'retired' THEN
        PERFORM cp_stamp_op_add(NEW.tenant_id, NEW.registration_id, 'retire', OLD.dps_id, OLD.stamp_id,
                                NULL, 'retired');
    ELSIF OLD.status = 'assigned' AND NEW.status = 'assigned' AND OLD.dps_id IS DISTINCT FROM NEW.dps_id THEN
        PERFORM cp_stamp_op_add(NEW.tenant_id, NEW.registration_id, 'remove_moved', OLD.dps_id, OLD.stamp_id,
                                NEW.dps_id, 'moved');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER devices_stamp_ops AFTER UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION cp_device_stamp_ops();

-- Delivered (or found obsolete): the op leaves the outbox and the device's
-- history says what was done at the stamp. p_token must still hold the
-- lease: a holder whose lease ran out (another worker took the op over)
-- changes nothing. Returns whether it did.
CREATE FUNCTION cp_stamp_op_done(p_id bigint, p_token text, p_event text, p_detail text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    o stamp_ops;
BEGIN
    DELETE FROM stamp_ops WHERE id = p_id AND claim_token = p_token RETURNING * INTO o;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO device_history (tenant_id, registration_id, event, from_stamp, reason)
        VALUES (o.tenant_id, o.registration_id, p_event, o.stamp_id,
                o.op || ' at ' || o.dps_id || coalesce(' (' || o.reason || ')', '') ||
                coalesce(': ' || p_detail, '') || ', attempts ' || (o.attempts + 1));
    RETURN true;
END $$;

-- Not delivered now: try again after p_delay_ms, the lease released.
-- p_count: a failed attempt (counted, its error kept); otherwise a wait
-- (remove_moved before the device registered at its new instance).
CREATE FUNCTION cp_stamp_op_retry(p_id bigint, p_token text, p_error text, p_delay_ms bigint, p_count boolean)
RETURNS boolean LANGUAGE sql AS $$
    UPDATE stamp_ops SET attempts = attempts + CASE WHEN p_count THEN 1 ELSE 0 END,
                         last_error = p_error,
                         next_at = now() + p_delay_ms * interval '1 millisecond',
                         claimed_until = '-infinity', claim_token = NULL
     WHERE id = p_id AND claim_token = p_token
    RETURNING true
$$;

-- What waits per DPS instance: undelivered ops, the oldest one's age, and
-- the last error recorded on any of them (the most recently created op
-- that has one).
CREATE FUNCTION cp_stamp_op_backlog()
RETURNS TABLE (dps_id text, undelivered bigint, oldest_age_s double precision, failing bigint, last_error text)
LANGUAGE sql STABLE AS $$
    SELECT o.dps_id, count(*), extract(epoch FROM now() - min(o.created_at))::double precision,
           count(*) FILTER (WHERE o.attempts > 0),
           (SELECT e.last_error FROM stamp_ops e WHERE e.dps_id = o.dps_id AND e.last_error IS NOT NULL
             ORDER BY e.next_at DESC LIMIT 1)
      FROM stamp_ops o GROUP BY o.dps_id
$$;
