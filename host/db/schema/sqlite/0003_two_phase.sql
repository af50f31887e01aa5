-- Two-phase commit branches prepared on the ledger. A debit branch reserves its amount at
-- prepare (balance -> held); a credit branch is only recorded. Commit posts both; abort
-- returns the reserve. Branch -1 is the fence an abort leaves when nothing was prepared, so
-- that a prepare arriving late is refused.
CREATE TABLE ledger_prepared (
    xid     TEXT NOT NULL,
    branch  INTEGER NOT NULL,
    account TEXT NOT NULL,
    delta   INTEGER NOT NULL,
    state   TEXT NOT NULL CHECK (state IN ('prepared', 'committed', 'aborted')),
    PRIMARY KEY (xid, branch)
) WITHOUT ROWID;
