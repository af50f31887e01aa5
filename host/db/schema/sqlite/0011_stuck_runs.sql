-- Stuck runs are what an operator looks for first (the console's "stuck" page, `runs list
-- --status stuck`): they are few, and without an index of their own listing them would read
-- every run ever made.
CREATE INDEX runs_stuck ON runs (created_at_ms, run_id) WHERE status = 'stuck';
