-- 010_quotas_suspend: per-tenant quotas and the suspended state.
-- max_devices: assigned devices the tenant may have across its geographies
-- (NULL: unlimited); a first placement beyond it is refused (403
-- quota_exceeded), devices already placed keep working.
-- max_provisions_per_minute: the tenant's own token bucket in Redis, taken in
-- the same script as the DPS buckets (NULL: unlimited).
-- status: a suspended tenant's devices are refused at every control plane
-- and its enrollment groups are disabled at every stamp; nothing is deleted.
ALTER TABLE tenants
    ADD COLUMN max_devices bigint CHECK (max_devices IS NULL OR max_devices BETWEEN 1 AND 1000000000),
    ADD COLUMN max_provisions_per_minute integer
        CHECK (max_provisions_per_minute IS NULL OR max_provisions_per_minute BETWEEN 1 AND 1000000),
    ADD COLUMN status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    ADD COLUMN suspended_at timestamptz;
