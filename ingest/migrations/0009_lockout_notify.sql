-- The lockout engine waits for the notice period before a lock, counted from when a notice was sent.
-- The sender marks outbox rows sent; this trigger tells the engine at once (NOTIFY is delivered only
-- if the update commits), so the engine needs no polling to learn that a notice went out.
-- Payload `customer:<id>`: the engine re-evaluates that customer's subscriptions.

CREATE FUNCTION outbox_sent_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.customer_id IS NOT NULL AND NEW.kind IN ('reminder', 'overdue') THEN
        PERFORM pg_notify('fleet_subscriptions', 'customer:' || NEW.customer_id::text);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_sent_notify
    AFTER UPDATE OF state ON outbox
    FOR EACH ROW WHEN (NEW.state = 'sent' AND OLD.state IS DISTINCT FROM 'sent')
    EXECUTE FUNCTION outbox_sent_notify();

-- The engine finds a device's latest lock or unlock decision by id.
CREATE INDEX lockout_decisions_device_id ON lockout_decisions (device_id, id DESC) WHERE desired <> 'none';
