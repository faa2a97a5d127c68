-- 003_dps_service: how the control plane reaches each DPS instance's service
-- API (the same API real Azure DPS offers) to keep tenants' enrollment groups
-- in place. The key is write-only in the admin API.
ALTER TABLE dps_instances
    ADD COLUMN service_host_name text,   -- the sr of service SAS tokens; default: endpoint
    ADD COLUMN service_key_name  text,
    ADD COLUMN service_key       text;
