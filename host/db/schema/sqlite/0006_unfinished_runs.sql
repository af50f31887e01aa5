-- Runs are found by status only to take over or release the unfinished ones, so their index
-- holds just those: a few pages however long the journal, where the index on (status,
-- created) grew with every run and had each run's end move its entry from one part of it to
-- another (two more pages in most group commits). Listing runs, newest first, scans the
-- index by time and stops at its limit; the index by workflow served no query.
DROP INDEX runs_by_status;
CREATE INDEX runs_unfinished ON runs (created_at_ms, run_id)
    WHERE status IN ('running', 'compensating');
DROP INDEX runs_by_workflow;
CREATE INDEX runs_by_time ON runs (created_at_ms, run_id);
