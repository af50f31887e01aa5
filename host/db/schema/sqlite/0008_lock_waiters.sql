-- The hosts waiting for a key, in the order they first asked: a free key goes to the earliest
-- waiter whose entry is still alive (refreshed at each of its attempts), so a waiter on one
-- host is passed over only by those that asked before it. One entry per host at most: only
-- the head of a host's line asks the backend.
CREATE TABLE lock_waiters (
    key         TEXT NOT NULL,
    owner       TEXT NOT NULL,
    since_us    INTEGER NOT NULL,
    stale_at_ms INTEGER NOT NULL,
    PRIMARY KEY (key, owner)
) WITHOUT ROWID;
