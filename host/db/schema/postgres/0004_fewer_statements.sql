-- Fewer statements per saga step on the server, whose CPU is what limits the transfer
-- benchmark on PostgreSQL (each statement inside a function is an executor start-up):
-- `ledger_step` fences the run and moves it to its next position with one UPDATE where it
-- locked the row first and updated it last (it writes the same events in every case past the
-- fence, so the position is known up front), writes the step's events with one INSERT where
-- it made one per event, and answers through its output columns instead of a query. Its
-- behaviour, messages and reply text are unchanged (the parity test against ledger.rs runs on
-- this version).
--
-- Runs get the indexes the SQLite journal has (schema/sqlite/0006): unfinished runs by time,
-- what claiming and releasing look for, and all runs by time, which listing walks newest
-- first; the status index moved each run's entry at its end and the workflow index served no
-- query.
DROP INDEX runs_by_status;
CREATE INDEX runs_unfinished ON runs (created_at_ms, run_id)
    WHERE status IN ('running', 'compensating');
DROP INDEX runs_by_workflow;
CREATE INDEX runs_by_time ON runs (created_at_ms, run_id);

CREATE OR REPLACE FUNCTION ledger_step(
    p_run_id        text,
    p_owner         text,
    p_next_seq      bigint,
    p_started       text,      -- the run's `started` event, to create the run; NULL if it exists
    p_workflow      text,
    p_module_hash   text,
    p_input         text,
    p_lease_ms      bigint,
    p_kinds         text[],    -- the events journaled before the outcome (buffered ones, the intent)
    p_bodies        text[],
    p_call          bigint,    -- the step's call number, for its outcome event
    p_reply_max     bigint,    -- payload_bytes_max: a longer reply fails the step as unknown
    p_op_id         text,
    p_action        text,      -- 'debit' or 'credit'
    p_request       text,      -- "<action> <payload>", as ledger.rs compares it
    p_account       text,
    p_amount        bigint,
    p_token_keys    text[],
    p_token_values  bigint[],
    p_now           bigint
) RETURNS TABLE (status text, outcome text, next_seq bigint)
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
    -- The run's position after this step: its events before the outcome, then the outcome.
    v_next      bigint := p_next_seq + coalesce(array_length(p_kinds, 1), 0) + 1;
    v_i         integer;
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
        -- The fence, and the run moved to its position after the step, in one statement: the
        -- step writes its events in every case below, and the row stays locked until commit.
        UPDATE runs r SET next_seq = v_next, updated_at_ms = p_now
        WHERE r.run_id = p_run_id AND r.next_seq = p_next_seq AND r.owner = p_owner;
        IF NOT FOUND THEN
            status := 'fenced';
            next_seq := 0;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;

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
    status := CASE WHEN v_ok THEN 'ok' ELSE 'rejected' END;
    outcome := v_text;
    next_seq := v_next;
    RETURN NEXT;
END;
$$;
