-- The outbox: one transaction record per balance change of an account, written by the
-- trigger below inside the transaction that changes the balance, so a committed change always
-- has its record and a rolled-back one never does, whichever code path wrote the entry. The
-- delivery loop (participants/src/outbox.rs) sends each record to every configured sink, at
-- least once, in `seq` order per account (a change of an account commits after the previous
-- one: each holds the account's row), and prunes delivered records after the retention period.
CREATE TABLE ledger_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id           TEXT NOT NULL,
    account         TEXT NOT NULL,
    delta           INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    -- The sinks that acknowledged it, each followed by a newline.
    acked           TEXT NOT NULL DEFAULT '',
    delivered_ms    INTEGER,
    lease_owner     TEXT,
    lease_until_ms  INTEGER,
    UNIQUE (op_id, account)
);
CREATE INDEX ledger_outbox_pending ON ledger_outbox (seq) WHERE delivered_ms IS NULL;
CREATE INDEX ledger_outbox_delivered ON ledger_outbox (delivered_ms) WHERE delivered_ms IS NOT NULL;

CREATE TRIGGER ledger_entries_to_outbox AFTER INSERT ON ledger_entries
BEGIN
    INSERT INTO ledger_outbox (op_id, account, delta, created_ms)
    VALUES (NEW.op_id, NEW.account, NEW.delta,
            CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER));
END;

-- An operation that changes one account twice adds to its entry: the record follows.
CREATE TRIGGER ledger_entries_to_outbox_again AFTER UPDATE OF delta ON ledger_entries
BEGIN
    UPDATE ledger_outbox SET delta = NEW.delta WHERE op_id = NEW.op_id AND account = NEW.account;
END;
