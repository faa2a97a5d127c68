-- 005_installer_placement: the device history names the installer token that
-- placed (or moved) the device. The router writes the token's public id into
-- the decision record ("installerToken"); this trigger copies it into the
-- history row, so cp_assign_device, cp_assign_devices and cp_move_device stay
-- as they are. A 'moved' row carries the decision itself; an 'assigned' row
-- doesn't (002: the record is kept once, on the device row written just
-- before in the same statement), so it is read from there: one primary-key
-- probe per first assignment.
ALTER TABLE device_history ADD COLUMN installer_token text;

CREATE FUNCTION cp_history_installer_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.decision IS NOT NULL THEN
        NEW.installer_token := NEW.decision->>'installerToken';
    ELSE
        SELECT d.decision->>'installerToken' INTO NEW.installer_token FROM devices d
         WHERE d.tenant_id = NEW.tenant_id AND d.registration_id = NEW.registration_id;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER device_history_installer_token BEFORE INSERT ON device_history
    FOR EACH ROW WHEN (NEW.event IN ('assigned', 'moved') AND NEW.installer_token IS NULL)
    EXECUTE FUNCTION cp_history_installer_token();
