-- 007_audit: the admin API's audit log (controlplane/audit.c, docs/api.md
-- "Audit log"). One row per admin mutation that succeeded and per use of the
-- operator token. Entries that name a device live in that device's
-- geography database (schema/geo/004_audit.sql, the same table); the others
-- here. id is random ("a" + 32 hex), unique across databases; at_us is the
-- writing control plane's clock in microseconds since the epoch, the order
-- of GET /v1/audit (newest first) across databases. before/after are the
-- resource as JSON with every secret replaced by "[redacted]".
CREATE TABLE audit_log (
    id            text PRIMARY KEY CHECK (id ~ '^a[0-9a-f]{32}$'),
    at_us         bigint NOT NULL,
    request_id    text NOT NULL,
    actor_kind    text NOT NULL CHECK (actor_kind IN ('operator', 'key')),
    actor_key_id  text,
    actor_name    text NOT NULL,
    tenant_id     text,
    method        text NOT NULL,
    route         text NOT NULL,
    resource      text NOT NULL,
    status        int NOT NULL,
    replayed      boolean NOT NULL DEFAULT false,
    before        jsonb,
    after         jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at_us DESC, id DESC);
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, at_us DESC, id DESC);
