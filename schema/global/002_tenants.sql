-- 002_tenants: customers of the vendor. The residency policy is a hard rule
-- for placement; the enrollment key derives every device key of the tenant
-- (as Azure DPS group enrollments do), so it is stored, and shown once.
CREATE TABLE tenants (
    id                     text PRIMARY KEY,
    name                   text NOT NULL,
    residency_geographies  text[] NOT NULL CHECK (cardinality(residency_geographies) >= 1),
    residency_regions      text[] NOT NULL DEFAULT '{}',
    tenancy                text NOT NULL DEFAULT 'pooled' CHECK (tenancy IN ('pooled', 'dedicated')),
    dedicated_stamps       text[] NOT NULL DEFAULT '{}',
    -- every geography the tenant's devices may live in, now or before a
    -- residency change: device lookups search these, never a global index
    lookup_geographies     text[] NOT NULL,
    enrollment_key         text NOT NULL,
    version                bigint NOT NULL DEFAULT 1,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Installer tokens (approach 4, low-touch provisioning on behalf of a device):
-- only a SHA-256 of the token is kept, so a database leak leaks no token.
CREATE TABLE installer_tokens (
    token_sha256  text PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    name          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX installer_tokens_tenant_idx ON installer_tokens (tenant_id);
