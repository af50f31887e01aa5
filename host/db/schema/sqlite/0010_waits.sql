-- Durable waits, signals, child runs and cancellation.
--
-- A waiting run is still `running` but has no owner and no instance: `wake_at_ms` says when
-- a host may claim it again (its timer, or 0 once a signal, a child's end or a cancellation
-- woke it) and `waiting_for` what it waits for, so that a signal or a child's end wakes only
-- the run waiting for exactly that. Unfinished runs that do not wait stay in
-- `runs_unfinished`; waiting ones are found by `runs_waiting`, ordered by when they are due,
-- so "what is due now" reads the due entries only, however many runs wait.
ALTER TABLE runs ADD COLUMN wake_at_ms INTEGER;
ALTER TABLE runs ADD COLUMN waiting_for TEXT;
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE runs ADD COLUMN cancel_reason TEXT;
DROP INDEX runs_unfinished;
CREATE INDEX runs_unfinished ON runs (created_at_ms, run_id)
    WHERE status IN ('running', 'compensating') AND wake_at_ms IS NULL;
CREATE INDEX runs_waiting ON runs (wake_at_ms, run_id) WHERE wake_at_ms IS NOT NULL;
CREATE INDEX runs_children ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

-- Signals sent to runs, kept until the run ends: one row per `signal_id` (a duplicate is
-- accepted once), delivered in the order they arrived (`seq`). The run's journal records
-- which it consumed (`wait-ended`), so a crash between arrival and delivery loses none.
CREATE TABLE signals (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id     TEXT NOT NULL,
    name       TEXT NOT NULL,
    signal_id  TEXT NOT NULL,
    payload    TEXT NOT NULL,
    sent_by    TEXT NOT NULL,
    at_ms      INTEGER NOT NULL
);
CREATE UNIQUE INDEX signals_by_id ON signals (run_id, signal_id);
CREATE INDEX signals_by_name ON signals (run_id, name, seq);

-- A child's end wakes its parent if the parent waits for it, in the transaction that ends the
-- child: no wake-up can be lost between the two.
CREATE TRIGGER runs_child_ended AFTER UPDATE OF status ON runs
WHEN NEW.parent_run_id IS NOT NULL AND NEW.status IN ('completed', 'compensated')
     AND OLD.status <> NEW.status
BEGIN
    UPDATE runs SET wake_at_ms = 0
    WHERE run_id = NEW.parent_run_id AND waiting_for = 'child:' || NEW.run_id;
END;
