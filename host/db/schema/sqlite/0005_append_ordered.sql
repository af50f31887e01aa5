-- Events and ledger operations are stored in the order they are written (rowid tables), with
-- their keys as unique indexes. Concurrent runs append to the same few pages instead of
-- dirtying one page each in a table clustered by run or operation id, which cuts the pages
-- every group commit writes (see ARCHITECTURE.md). The unique indexes keep the guarantees:
-- one event per (run, seq), one operation per key. Events no longer reference runs by a
-- foreign key: every append ends by updating its run's row, which fails (and rolls the append
-- back) if the run does not exist, so the key's check on every insert was redundant work.
CREATE TABLE events_by_time (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    body   TEXT NOT NULL
);
INSERT INTO events_by_time (run_id, seq, at_ms, kind, body)
    SELECT run_id, seq, at_ms, kind, body FROM events ORDER BY at_ms, run_id, seq;
DROP TABLE events;
ALTER TABLE events_by_time RENAME TO events;
CREATE UNIQUE INDEX events_by_run ON events (run_id, seq);

CREATE TABLE ledger_ops_by_time (
    op_id   TEXT NOT NULL,
    action  TEXT NOT NULL,
    request TEXT NOT NULL,
    status  TEXT NOT NULL CHECK (status IN ('applied', 'rejected', 'tombstone')),
    reply   TEXT NOT NULL,
    at_ms   INTEGER NOT NULL
);
INSERT INTO ledger_ops_by_time (op_id, action, request, status, reply, at_ms)
    SELECT op_id, action, request, status, reply, at_ms FROM ledger_ops ORDER BY at_ms, op_id;
DROP TABLE ledger_ops;
ALTER TABLE ledger_ops_by_time RENAME TO ledger_ops;
CREATE UNIQUE INDEX ledger_ops_by_id ON ledger_ops (op_id);
