-- 006_api_keys: scoped API keys for the admin API (docs/tenancy.md).
-- A key is cpk_<id>_<secret>: the id is public (it names the key in lists
-- and in the audit log), the secret is 256 random bits shown once and kept
-- only as its SHA-256. tenant_id NULL is a platform key. A rotation moves
-- the old hash to previous_sha256, valid until previous_valid_until.
CREATE TABLE api_keys (
    id                    text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    name                  text NOT NULL,
    tenant_id             text REFERENCES tenants(id),
    scopes                text[] NOT NULL,
    secret_sha256         bytea NOT NULL CHECK (length(secret_sha256) = 32),
    previous_sha256       bytea CHECK (length(previous_sha256) = 32),
    previous_valid_until  timestamptz,
    expires_at            timestamptz,
    revoked_at            timestamptz,
    created_by            text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    rotated_at            timestamptz,
    version               bigint NOT NULL DEFAULT 1
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, id);
