-- Test-only: every change of a gathering's owner row (a claim moves its
-- epoch, a commit its seq) is logged with the database's clock, in the
-- order the row lock serialised them. The fault test reads it to find two
-- owners committing at once (an older epoch committing after a newer one)
-- and how long each move left a gathering without commits. Never part of
-- a deployment.
CREATE TABLE IF NOT EXISTS gathering_audit (
    n bigserial PRIMARY KEY,
    id text NOT NULL,
    node text,
    epoch bigint NOT NULL,
    seq bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE OR REPLACE FUNCTION gathering_audit_row() RETURNS trigger AS $$
BEGIN
    IF NEW.seq IS DISTINCT FROM OLD.seq OR NEW.epoch IS DISTINCT FROM OLD.epoch THEN
        INSERT INTO gathering_audit (id, node, epoch, seq) VALUES (NEW.id, NEW.node, NEW.epoch, NEW.seq);
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS gathering_audit_trigger ON gathering_owners;
CREATE TRIGGER gathering_audit_trigger AFTER UPDATE ON gathering_owners
    FOR EACH ROW EXECUTE FUNCTION gathering_audit_row();
