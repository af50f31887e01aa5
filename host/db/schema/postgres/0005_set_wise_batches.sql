-- Batches written set-wise. With group commit the server's CPU goes mostly to starting and
-- ending statements: `ledger_steps` called `ledger_step` once per step, and that ran seven
-- statements; `append_batch` ran two per run. Here a batch of steps, in the usual case, is a
-- handful of statements whatever its size, and a batch of appends is one.
--
-- The usual case, for `ledger_steps`: every step is of a different run, no step carries
-- fencing tokens, no step's operation id was used before, and every step passes the ledger's
-- checks when the batch's steps are applied in order. Then applying them all at once is the
-- same as applying them one after another: each account moves by the sum of its steps, and
-- each step's reply shows the balance after it (the account's balance plus the steps on it up
-- to and including this one). Otherwise the batch falls back to one step at a time, exactly as
-- `ledger_step` does: from the start when two steps are of one run or tokens are present, or
-- after the runs are fenced when the ledger part is not the usual case (a repeat, a refusal).
--
-- `ledger_step` is split in two: its fence (or the run's creation) stays, and the ledger
-- operation with the step's events becomes `ledger_step_apply`, which the fallback calls too.
-- Behaviour, messages and reply text are unchanged; the parity test runs batches through
-- every path against ledger.rs.

-- A run's row is updated a few times in its first moments and an account's on every step:
-- room on each page lets those updates stay on the page (HOT), so they add no index entries.
-- New pages only; existing ones keep what they have.
ALTER TABLE runs SET (fillfactor = 60);
ALTER TABLE ledger_accounts SET (fillfactor = 50);

CREATE TYPE ledger_step_result AS (status text, outcome text);

-- A step's ledger operation, idempotency record and events, once its run is fenced and moved
-- (or created): what `ledger_step` did after the fence, unchanged.
CREATE FUNCTION ledger_step_apply(
    p_run_id        text,
    p_next_seq      bigint,
    p_kinds         text[],
    p_bodies        text[],
    p_call          bigint,
    p_reply_max     bigint,
    p_op_id         text,
    p_action        text,
    p_request       text,
    p_account       text,
    p_amount        bigint,
    p_token_keys    text[],
    p_token_values  bigint[],
    p_now           bigint
) RETURNS ledger_step_result
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_prev      record;
    v_newest    bigint;
    v_balance   bigint;
    v_ok        boolean;
    v_text      text;
    v_body      text;
    v_kind      text := 'step-failed';
    v_i         integer;
    v_result    ledger_step_result;
BEGIN
    -- ledger.rs `apply`: the first outcome for a key that was used before.
    SELECT o.status, o.request, o.reply INTO v_prev FROM ledger_ops o WHERE o.op_id = p_op_id;
    IF FOUND THEN
        IF v_prev.request <> p_request AND v_prev.status <> 'tombstone' THEN
            v_ok := false;
            v_text := format('idempotency key %s was already used for a different request (%s)',
                             p_op_id, v_prev.request);
        ELSIF v_prev.status = 'applied' THEN
            v_ok := true;
            v_text := v_prev.reply;
        ELSIF v_prev.status = 'rejected' THEN
            v_ok := false;
            v_text := v_prev.reply;
        ELSE
            v_ok := false;
            v_text := format('operation %s was compensated before it ran; it can never apply', p_op_id);
        END IF;
    ELSE
        -- ledger.rs `fence`: refuse a token older than the newest seen for its lock.
        v_ok := true;
        FOR v_i IN 1 .. coalesce(array_length(p_token_keys, 1), 0) LOOP
            SELECT f.token INTO v_newest FROM ledger_fences f WHERE f.key = p_token_keys[v_i];
            IF FOUND AND v_newest > p_token_values[v_i] THEN
                v_ok := false;
                v_text := format('stale fencing token %s for lock ''%s'': the ledger has already seen token %s, so the lock has passed to another holder',
                                 p_token_values[v_i], p_token_keys[v_i], v_newest);
                EXIT;
            END IF;
        END LOOP;
        IF v_ok THEN
            FOR v_i IN 1 .. coalesce(array_length(p_token_keys, 1), 0) LOOP
                INSERT INTO ledger_fences (key, token) VALUES (p_token_keys[v_i], p_token_values[v_i])
                ON CONFLICT (key) DO UPDATE SET token = CASE
                    WHEN ledger_fences.token > excluded.token THEN ledger_fences.token
                    ELSE excluded.token END;
            END LOOP;
            -- ledger.rs `debit` / `credit`.
            IF p_action = 'debit' THEN
                UPDATE ledger_accounts a SET balance = a.balance - p_amount
                WHERE a.account = p_account AND a.balance >= p_amount
                RETURNING a.balance INTO v_balance;
                IF NOT FOUND THEN
                    v_ok := false;
                    SELECT a.balance INTO v_balance FROM ledger_accounts a WHERE a.account = p_account;
                    IF FOUND THEN
                        v_text := format('insufficient funds in ''%s'': balance %s is less than %s',
                                         p_account, v_balance, p_amount);
                    ELSE
                        v_text := format('unknown account ''%s''', p_account);
                    END IF;
                END IF;
            ELSE
                UPDATE ledger_accounts a SET balance = a.balance + p_amount
                WHERE a.account = p_account AND a.balance <= 4611686018427387903 - p_amount
                RETURNING a.balance INTO v_balance;
                IF NOT FOUND THEN
                    v_ok := false;
                    PERFORM 1 FROM ledger_accounts a WHERE a.account = p_account;
                    IF FOUND THEN
                        v_text := format('credit to ''%s'' would overflow its balance', p_account);
                    ELSE
                        v_text := format('unknown account ''%s''', p_account);
                    END IF;
                END IF;
            END IF;
            IF v_ok THEN
                INSERT INTO ledger_entries (op_id, account, delta)
                VALUES (p_op_id, p_account, CASE WHEN p_action = 'debit' THEN -p_amount ELSE p_amount END)
                ON CONFLICT (op_id, account) DO UPDATE SET delta = ledger_entries.delta + excluded.delta;
                -- serde_json's text for {"account": .., "balance": ..}: keys sorted, no spaces.
                v_text := '{"account":' || to_json(p_account)::text || ',"balance":' || v_balance || '}';
            END IF;
        END IF;
        INSERT INTO ledger_ops (op_id, action, request, status, reply, at_ms)
        VALUES (p_op_id, p_action, p_request, CASE WHEN v_ok THEN 'applied' ELSE 'rejected' END,
                v_text, p_now);
    END IF;

    -- The step's events: those before the outcome, then the outcome, as event.rs encodes them.
    IF v_ok AND octet_length(v_text) > p_reply_max THEN
        v_body := '{"kind":"step-failed","call":' || p_call || ',"error":{"kind":"unknown","reason":'
               || to_json(format('reply of %s bytes exceeds payload_bytes_max = %s',
                                 octet_length(v_text), p_reply_max))::text || '}}';
    ELSIF v_ok THEN
        v_kind := 'step-done';
        v_body := '{"kind":"step-done","call":' || p_call || ',"output":' || to_json(v_text)::text || '}';
    ELSE
        v_body := '{"kind":"step-failed","call":' || p_call || ',"error":{"kind":"rejected","reason":'
               || to_json(v_text)::text || '}}';
    END IF;
    INSERT INTO events (run_id, seq, at_ms, kind, body)
    SELECT p_run_id, p_next_seq + e.i - 1, p_now, e.kind, e.body
    FROM unnest(p_kinds || v_kind, p_bodies || v_body) WITH ORDINALITY AS e(kind, body, i);
    v_result.status := CASE WHEN v_ok THEN 'ok' ELSE 'rejected' END;
    v_result.outcome := v_text;
    RETURN v_result;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_step(
    p_run_id        text,
    p_owner         text,
    p_next_seq      bigint,
    p_started       text,
    p_workflow      text,
    p_module_hash   text,
    p_input         text,
    p_lease_ms      bigint,
    p_kinds         text[],
    p_bodies        text[],
    p_call          bigint,
    p_reply_max     bigint,
    p_op_id         text,
    p_action        text,
    p_request       text,
    p_account       text,
    p_amount        bigint,
    p_token_keys    text[],
    p_token_values  bigint[],
    p_now           bigint
) RETURNS TABLE (status text, outcome text, next_seq bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_next      bigint := p_next_seq + coalesce(array_length(p_kinds, 1), 0) + 1;
    v_result    ledger_step_result;
BEGIN
    IF p_started IS NOT NULL THEN
        INSERT INTO runs (run_id, workflow, module_hash, status, input, created_at_ms, updated_at_ms,
                          next_seq, owner, lease_expires_at_ms)
        VALUES (p_run_id, p_workflow, p_module_hash, 'running', p_input, p_now, p_now, v_next, p_owner,
                CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + p_lease_ms)
        ON CONFLICT (run_id) DO NOTHING;
        IF NOT FOUND THEN
            status := 'exists';
            next_seq := 0;
            RETURN NEXT;
            RETURN;
        END IF;
        INSERT INTO events (run_id, seq, at_ms, kind, body) VALUES (p_run_id, 1, p_now, 'started', p_started);
    ELSE
        UPDATE runs r SET next_seq = v_next, updated_at_ms = p_now
        WHERE r.run_id = p_run_id AND r.next_seq = p_next_seq AND r.owner = p_owner;
        IF NOT FOUND THEN
            status := 'fenced';
            next_seq := 0;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    v_result := ledger_step_apply(p_run_id, p_next_seq, p_kinds, p_bodies, p_call, p_reply_max,
                                  p_op_id, p_action, p_request, p_account, p_amount,
                                  p_token_keys, p_token_values, p_now);
    status := v_result.status;
    outcome := v_result.outcome;
    next_seq := v_next;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION ledger_steps(
    p_run_ids       text[],
    p_owners        text[],
    p_next_seqs     bigint[],
    p_starteds      text[],
    p_workflows     text[],
    p_module_hashes text[],
    p_inputs        text[],
    p_lease_ms      bigint[],
    p_event_counts  bigint[],
    p_kinds         text[],
    p_bodies        text[],
    p_calls         bigint[],
    p_reply_max     bigint[],
    p_op_ids        text[],
    p_actions       text[],
    p_requests      text[],
    p_accounts      text[],
    p_amounts       bigint[],
    p_token_counts  bigint[],
    p_token_keys    text[],
    p_token_values  bigint[],
    p_now           bigint
) RETURNS TABLE (status text, outcome text, next_seq bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_n         integer := coalesce(array_length(p_run_ids, 1), 0);
    v_event     bigint := 0;
    v_token     bigint := 0;
    v_i         integer;
    v_first     bigint[] := '{}';  -- per step: its events before the outcome start after this index
    v_next      bigint[] := '{}';  -- per step: the run's position after it
    v_k         integer;
    -- The steps whose runs were fenced and moved, or created, in order, and their fields.
    v_taken     integer[];
    v_ops       text[];
    v_accounts  text[];
    v_deltas    bigint[];
    v_after     numeric[];         -- per taken step: its account's balance after it
    v_final_accounts text[];       -- each account the taken steps touch, and its balance after
    v_final_balances numeric[];
    v_status    text[];
    v_outcome   text[];
    v_usual     boolean;
    v_result    ledger_step_result;
BEGIN
    -- Two steps of one run (the second must see the first's position) or fencing tokens (the
    -- newest token per lock must be checked step by step): one step at a time, as 0003 did.
    IF coalesce(array_length(p_token_keys, 1), 0) > 0
       OR (SELECT count(DISTINCT r) FROM unnest(p_run_ids) AS r) < v_n THEN
        FOR v_i IN 1 .. v_n LOOP
            RETURN QUERY SELECT * FROM ledger_step(
                p_run_ids[v_i], p_owners[v_i], p_next_seqs[v_i], NULLIF(p_starteds[v_i], ''),
                p_workflows[v_i], p_module_hashes[v_i], p_inputs[v_i], p_lease_ms[v_i],
                coalesce(p_kinds[v_event + 1 : v_event + p_event_counts[v_i]], '{}'),
                coalesce(p_bodies[v_event + 1 : v_event + p_event_counts[v_i]], '{}'),
                p_calls[v_i], p_reply_max[v_i], p_op_ids[v_i], p_actions[v_i], p_requests[v_i],
                p_accounts[v_i], p_amounts[v_i],
                coalesce(p_token_keys[v_token + 1 : v_token + p_token_counts[v_i]], '{}'),
                coalesce(p_token_values[v_token + 1 : v_token + p_token_counts[v_i]], '{}'),
                p_now);
            v_event := v_event + p_event_counts[v_i];
            v_token := v_token + p_token_counts[v_i];
        END LOOP;
        RETURN;
    END IF;

    FOR v_i IN 1 .. v_n LOOP
        v_first := v_first || v_event;
        v_next := v_next || (p_next_seqs[v_i] + p_event_counts[v_i] + 1);
        v_event := v_event + p_event_counts[v_i];
    END LOOP;

    -- The runs: each existing one fenced and moved to its position after its step, each new
    -- one created there (a run id that exists is refused). Every run appears once. The steps
    -- whose runs this took go on, their ledger fields gathered in order.
    WITH s AS (
        SELECT * FROM unnest(p_run_ids, p_owners, p_next_seqs, p_starteds, p_workflows,
                             p_module_hashes, p_inputs, p_lease_ms, v_next)
            WITH ORDINALITY AS s(run_id, owner, from_seq, started, workflow, module_hash, input,
                                 lease_ms, to_seq, i)
    ), moved AS (
        UPDATE runs r SET next_seq = s.to_seq, updated_at_ms = p_now
        FROM s
        WHERE s.started = '' AND r.run_id = s.run_id AND r.next_seq = s.from_seq AND r.owner = s.owner
        RETURNING s.i
    ), created AS (
        INSERT INTO runs (run_id, workflow, module_hash, status, input, created_at_ms,
                          updated_at_ms, next_seq, owner, lease_expires_at_ms)
        SELECT s.run_id, s.workflow, s.module_hash, 'running', s.input, p_now, p_now, s.to_seq,
               s.owner, CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + s.lease_ms
        FROM s WHERE s.started <> ''
        ON CONFLICT (run_id) DO NOTHING
        RETURNING run_id
    ), taken AS (
        SELECT m.i FROM moved m
        UNION ALL
        SELECT s.i FROM created c JOIN s ON s.run_id = c.run_id
    )
    SELECT coalesce(array_agg(t.i ORDER BY t.i), '{}'),
           array_agg(p_op_ids[t.i] ORDER BY t.i),
           array_agg(p_accounts[t.i] ORDER BY t.i),
           array_agg(CASE WHEN p_actions[t.i] = 'debit' THEN -p_amounts[t.i] ELSE p_amounts[t.i] END
                     ORDER BY t.i)
    INTO v_taken, v_ops, v_accounts, v_deltas
    FROM taken t;

    -- The usual case? The taken steps' accounts are locked here, in one order, for the rest.
    -- A step's balance after it: its account's balance and the deltas of the steps on that
    -- account up to and including it, in order.
    WITH s AS (
        SELECT * FROM unnest(v_accounts, v_deltas) WITH ORDINALITY AS s(account, delta, k)
    ), a AS (
        SELECT a.account, a.balance FROM ledger_accounts a
        WHERE a.account = ANY (v_accounts)
        ORDER BY a.account
        FOR UPDATE
    ), stepped AS (
        SELECT s.k, s.account,
               a.balance + sum(s.delta) OVER (PARTITION BY s.account ORDER BY s.k) AS balance
        FROM s LEFT JOIN a ON a.account = s.account
    ), final AS (
        SELECT DISTINCT ON (stepped.account) stepped.account, stepped.balance
        FROM stepped ORDER BY stepped.account, stepped.k DESC
    )
    SELECT (SELECT bool_and(coalesce(stepped.balance BETWEEN 0 AND 4611686018427387903, false))
            FROM stepped)
               AND NOT EXISTS (SELECT 1 FROM ledger_ops o WHERE o.op_id = ANY (v_ops))
               AND (SELECT count(DISTINCT op) FROM unnest(v_ops) AS op) = cardinality(v_ops),
           (SELECT array_agg(stepped.balance ORDER BY stepped.k) FROM stepped),
           (SELECT array_agg(final.account ORDER BY final.account) FROM final),
           (SELECT array_agg(final.balance ORDER BY final.account) FROM final)
    INTO v_usual, v_after, v_final_accounts, v_final_balances;

    v_status := array_fill(NULL::text, ARRAY[v_n]);
    v_outcome := array_fill(NULL::text, ARRAY[v_n]);
    IF v_usual IS TRUE THEN
        FOR v_k IN 1 .. cardinality(v_taken) LOOP
            v_status[v_taken[v_k]] := 'ok';
            -- serde_json's text for {"account": .., "balance": ..}: keys sorted, no spaces.
            v_outcome[v_taken[v_k]] := '{"account":' || to_json(v_accounts[v_k])::text
                                       || ',"balance":' || v_after[v_k]::bigint || '}';
        END LOOP;
        -- Balances, entries, records and each taken step's events (`started` for a run it
        -- created, those before its outcome, then the outcome, as event.rs encodes them).
        WITH balanced AS (
            UPDATE ledger_accounts a
            SET balance = v_final_balances[array_position(v_final_accounts, a.account)]
            WHERE a.account = ANY (v_final_accounts)
        ), entered AS (
            INSERT INTO ledger_entries (op_id, account, delta)
            SELECT * FROM unnest(v_ops, v_accounts, v_deltas)
            ON CONFLICT (op_id, account) DO UPDATE SET delta = ledger_entries.delta + excluded.delta
        ), recorded AS (
            INSERT INTO ledger_ops (op_id, action, request, status, reply, at_ms)
            SELECT p_op_ids[t.i], p_actions[t.i], p_requests[t.i], 'applied', v_outcome[t.i], p_now
            FROM unnest(v_taken) AS t(i)
        ), s AS (
            SELECT t.i, p_run_ids[t.i] AS run_id, p_next_seqs[t.i] AS from_seq,
                   p_starteds[t.i] AS started, p_event_counts[t.i] AS n_events,
                   v_first[t.i] AS event0, p_calls[t.i] AS call, p_reply_max[t.i] AS reply_max,
                   v_outcome[t.i] AS reply
            FROM unnest(v_taken) AS t(i)
        )
        INSERT INTO events (run_id, seq, at_ms, kind, body)
        SELECT s.run_id, 1, p_now, 'started', s.started FROM s WHERE s.started <> ''
        UNION ALL
        SELECT s.run_id, s.from_seq + e.j - 1, p_now, p_kinds[s.event0 + e.j], p_bodies[s.event0 + e.j]
        FROM s, generate_series(1, s.n_events) AS e(j)
        UNION ALL
        SELECT s.run_id, s.from_seq + s.n_events, p_now,
               CASE WHEN octet_length(s.reply) > s.reply_max THEN 'step-failed' ELSE 'step-done' END,
               CASE WHEN octet_length(s.reply) > s.reply_max THEN
                   '{"kind":"step-failed","call":' || s.call || ',"error":{"kind":"unknown","reason":'
                   || to_json(format('reply of %s bytes exceeds payload_bytes_max = %s',
                                     octet_length(s.reply), s.reply_max))::text || '}}'
               ELSE
                   '{"kind":"step-done","call":' || s.call || ',"output":' || to_json(s.reply)::text || '}'
               END
        FROM s;
    ELSE
        FOREACH v_i IN ARRAY v_taken LOOP
            v_result := ledger_step_apply(
                p_run_ids[v_i], p_next_seqs[v_i],
                coalesce(p_kinds[v_first[v_i] + 1 : v_first[v_i] + p_event_counts[v_i]], '{}'),
                coalesce(p_bodies[v_first[v_i] + 1 : v_first[v_i] + p_event_counts[v_i]], '{}'),
                p_calls[v_i], p_reply_max[v_i], p_op_ids[v_i], p_actions[v_i], p_requests[v_i],
                p_accounts[v_i], p_amounts[v_i], '{}', '{}', p_now);
            v_status[v_i] := v_result.status;
            v_outcome[v_i] := v_result.outcome;
        END LOOP;
        -- The runs created by this batch still need their `started` events.
        INSERT INTO events (run_id, seq, at_ms, kind, body)
        SELECT p_run_ids[t.i], 1, p_now, 'started', p_starteds[t.i]
        FROM unnest(v_taken) AS t(i)
        WHERE p_starteds[t.i] <> '';
    END IF;

    FOR v_i IN 1 .. v_n LOOP
        IF v_status[v_i] IS NULL THEN
            status := CASE WHEN p_starteds[v_i] <> '' THEN 'exists' ELSE 'fenced' END;
            outcome := NULL;
            next_seq := 0;
        ELSE
            status := v_status[v_i];
            outcome := v_outcome[v_i];
            next_seq := v_next[v_i];
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION append_batch(
    p_run_ids      text[],
    p_owners       text[],
    p_next_seqs    bigint[],
    p_event_counts bigint[],
    p_kinds        text[],
    p_bodies       text[],
    p_statuses     text[],
    p_outputs      text[],
    p_errors       text[],
    p_now          bigint
) RETURNS TABLE (appended boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_n         integer := coalesce(array_length(p_run_ids, 1), 0);
    v_event     bigint := 0;
    v_first     bigint[] := '{}';
    v_status    text;
    v_i         integer;
    v_j         integer;
BEGIN
    -- Two appends to one run: the second must see the first's position, so one at a time.
    IF (SELECT count(DISTINCT r) FROM unnest(p_run_ids) AS r) < v_n THEN
        FOR v_i IN 1 .. v_n LOOP
            v_status := NULLIF(p_statuses[v_i], '');
            UPDATE runs r SET next_seq = p_next_seqs[v_i] + p_event_counts[v_i], updated_at_ms = p_now,
                status = COALESCE(v_status, r.status),
                output = CASE WHEN v_status IS NULL THEN r.output ELSE p_outputs[v_i] END,
                error = CASE WHEN v_status IS NULL THEN r.error ELSE p_errors[v_i] END,
                lease_expires_at_ms = CASE WHEN v_status IS NULL OR v_status = 'compensating'
                                           THEN r.lease_expires_at_ms ELSE 0 END
            WHERE r.run_id = p_run_ids[v_i] AND r.next_seq = p_next_seqs[v_i] AND r.owner = p_owners[v_i];
            appended := FOUND AND p_event_counts[v_i] > 0;
            IF appended THEN
                FOR v_j IN 1 .. p_event_counts[v_i] LOOP
                    INSERT INTO events (run_id, seq, at_ms, kind, body)
                    VALUES (p_run_ids[v_i], p_next_seqs[v_i] + v_j - 1, p_now,
                            p_kinds[v_event + v_j], p_bodies[v_event + v_j]);
                END LOOP;
            END IF;
            v_event := v_event + p_event_counts[v_i];
            RETURN NEXT;
        END LOOP;
        RETURN;
    END IF;

    FOR v_i IN 1 .. v_n LOOP
        v_first := v_first || v_event;
        v_event := v_event + p_event_counts[v_i];
    END LOOP;
    -- A run that has ended holds no lease: nothing executes it any more, and a stuck run must
    -- be free for whichever host an operator retries it on.
    RETURN QUERY
    WITH s AS (
        SELECT * FROM unnest(p_run_ids, p_owners, p_next_seqs, p_event_counts, v_first,
                             p_statuses, p_outputs, p_errors)
            WITH ORDINALITY AS s(run_id, owner, from_seq, n_events, event0, status, output, error, i)
    ), moved AS (
        UPDATE runs r SET next_seq = s.from_seq + s.n_events, updated_at_ms = p_now,
            status = COALESCE(NULLIF(s.status, ''), r.status),
            output = CASE WHEN NULLIF(s.status, '') IS NULL THEN r.output ELSE s.output END,
            error = CASE WHEN NULLIF(s.status, '') IS NULL THEN r.error ELSE s.error END,
            lease_expires_at_ms = CASE WHEN NULLIF(s.status, '') IS NULL OR s.status = 'compensating'
                                       THEN r.lease_expires_at_ms ELSE 0 END
        FROM s
        WHERE r.run_id = s.run_id AND r.next_seq = s.from_seq AND r.owner = s.owner
        RETURNING s.i, s.run_id, s.from_seq, s.n_events, s.event0
    ), written AS (
        INSERT INTO events (run_id, seq, at_ms, kind, body)
        SELECT m.run_id, m.from_seq + e.j - 1, p_now, p_kinds[m.event0 + e.j], p_bodies[m.event0 + e.j]
        FROM moved m, generate_series(1, m.n_events) AS e(j)
    )
    SELECT m.i IS NOT NULL AND s.n_events > 0 FROM s LEFT JOIN moved m ON m.i = s.i ORDER BY s.i;
END;
$$;

-- These statements join a batch's few rows to large tables, by index. Their plans are made
-- once per connection (a custom plan per call, which the planner would otherwise prefer for
-- array arguments, costs more than the statement), and a plan made while a table was small (a
-- fresh journal) must not scan the whole table for every batch once it is not.
ALTER FUNCTION ledger_steps(text[], text[], bigint[], text[], text[], text[], text[], bigint[],
                            bigint[], text[], text[], bigint[], bigint[], text[], text[], text[],
                            text[], bigint[], bigint[], text[], bigint[], bigint)
    SET enable_seqscan = off SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION append_batch(text[], text[], bigint[], bigint[], text[], text[], text[], text[],
                            text[], bigint)
    SET enable_seqscan = off SET plan_cache_mode = force_generic_plan;
