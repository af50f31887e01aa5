-- The outbox: one transaction record per balance change of an account, written by the
-- trigger below inside the transaction that changes the balance, so a committed change always
-- has its record and a rolled-back one never does, whichever code path (the host's statements,
-- `ledger_step`, the set-wise batches) wrote the entry. The delivery loop
-- (participants/src/outbox.rs) sends each record to every configured sink, at least once, in
-- `seq` order per account: every change of an account updates the account's row before its
-- entry, so a later change of it waits for the earlier one's commit and takes a higher `seq`.
CREATE TABLE ledger_outbox (
    seq             BIGSERIAL PRIMARY KEY,
    op_id           TEXT NOT NULL,
    account         TEXT NOT NULL,
    delta           BIGINT NOT NULL,
    created_ms      BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    -- The sinks that acknowledged it, each followed by a newline.
    acked           TEXT NOT NULL DEFAULT '',
    delivered_ms    BIGINT,
    lease_owner     TEXT,
    lease_until_ms  BIGINT,
    UNIQUE (op_id, account)
);
CREATE INDEX ledger_outbox_pending ON ledger_outbox (seq) WHERE delivered_ms IS NULL;
CREATE INDEX ledger_outbox_delivered ON ledger_outbox (delivered_ms) WHERE delivered_ms IS NOT NULL;

CREATE FUNCTION ledger_entries_to_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO ledger_outbox (op_id, account, delta, created_ms)
        VALUES (NEW.op_id, NEW.account, NEW.delta,
                (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
    ELSE
        -- An operation that changes one account twice adds to its entry: the record follows.
        UPDATE ledger_outbox SET delta = NEW.delta
        WHERE op_id = NEW.op_id AND account = NEW.account;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER ledger_entries_to_outbox AFTER INSERT OR UPDATE OF delta ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_to_outbox();
