-- 004_audit: the audit log entries that name a device of this geography
-- (controlplane/audit.c, docs/api.md "Audit log"): the same table as the
-- global catalog's (schema/global/007_audit.sql), so that a device's
-- records stay in its geography. GET /v1/audit merges them by at_us.
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
