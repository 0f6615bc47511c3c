-- formSubmission's own data, written by its persist and finalize steps inside the transactions
-- that record those steps' success: each side effect happens exactly once.
--
-- IF NOT EXISTS: up to the core's version 2 (now empty) created this same table, so a database
-- migrated before the application had its own migration set already has it, rows and all; this
-- migration then only records it as the application's.
CREATE TABLE IF NOT EXISTS form_submissions (
    workflow_id    text PRIMARY KEY,
    name           text NOT NULL,
    email          text NOT NULL,
    message        text NOT NULL,
    status         text NOT NULL DEFAULT 'received' CHECK (status IN ('received', 'finalized')),
    external_reply jsonb,
    -- incremented by every committed run of finalize: anything but 1 means a duplicate effect
    finalize_count integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    finalized_at   timestamptz
);
