-- Durable waits, signals, child runs and cancellation (see sqlite/0010_waits.sql).
ALTER TABLE runs ADD COLUMN wake_at_ms BIGINT;
ALTER TABLE runs ADD COLUMN waiting_for TEXT;
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE runs ADD COLUMN cancel_reason TEXT;
DROP INDEX runs_unfinished;
CREATE INDEX runs_unfinished ON runs (created_at_ms, run_id)
    WHERE status IN ('running', 'compensating') AND wake_at_ms IS NULL;
CREATE INDEX runs_waiting ON runs (wake_at_ms, run_id) WHERE wake_at_ms IS NOT NULL;
CREATE INDEX runs_children ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

CREATE TABLE signals (
    seq        BIGSERIAL PRIMARY KEY,
    run_id     TEXT NOT NULL,
    name       TEXT NOT NULL,
    signal_id  TEXT NOT NULL,
    payload    TEXT NOT NULL,
    sent_by    TEXT NOT NULL,
    at_ms      BIGINT NOT NULL
);
CREATE UNIQUE INDEX signals_by_id ON signals (run_id, signal_id);
CREATE INDEX signals_by_name ON signals (run_id, name, seq);

CREATE FUNCTION wake_parent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE runs SET wake_at_ms = 0
    WHERE run_id = NEW.parent_run_id AND waiting_for = 'child:' || NEW.run_id;
    RETURN NULL;
END $$;
CREATE TRIGGER runs_child_ended AFTER UPDATE OF status ON runs
FOR EACH ROW WHEN (NEW.parent_run_id IS NOT NULL AND NEW.status IN ('completed', 'compensated')
                   AND OLD.status <> NEW.status)
EXECUTE FUNCTION wake_parent();
