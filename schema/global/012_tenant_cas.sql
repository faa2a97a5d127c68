-- 012_tenant_cas: X.509 CA certificates per tenant (docs/api.md "X.509 CA
-- certificates"). A CA is uploaded unverified with a random verification
-- code; it becomes verified once the tenant shows a certificate with
-- CN = that code signed by the CA's key (proof of possession, as Azure DPS
-- does it). Verified and enabled CAs are what device certificates are
-- checked against at the control plane, and the reconciler keeps one X.509
-- enrollment group per such CA at every DPS instance the tenant may use.
-- The PEM is public material (no secret is stored here).
CREATE TABLE tenant_cas (
    id                 text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    tenant_id          text NOT NULL REFERENCES tenants(id),
    name               text,
    certificate_pem    text NOT NULL CHECK (length(certificate_pem) <= 16384),
    subject            text NOT NULL,
    thumbprint         text NOT NULL CHECK (thumbprint ~ '^[0-9A-F]{64}$'),
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    verification_code  text NOT NULL,
    verified_at        timestamptz,
    enabled            boolean NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    version            bigint NOT NULL DEFAULT 1,
    UNIQUE (tenant_id, thumbprint)
);
CREATE INDEX tenant_cas_tenant_idx ON tenant_cas (tenant_id, id);
