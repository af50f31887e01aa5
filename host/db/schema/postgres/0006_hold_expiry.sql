-- A hold may expire: past `expires_at_ms` it can no longer be captured, and the host voids it
-- (its amount goes back to the account's balance). NULL: the hold never expires.
ALTER TABLE ledger_holds ADD COLUMN expires_at_ms BIGINT;
CREATE INDEX ledger_holds_expiring ON ledger_holds (expires_at_ms) WHERE state = 'held' AND expires_at_ms IS NOT NULL;
