-- The writes of formSubmission's transactional steps, made inside the transaction that records
-- the step's success.

-- name: insert_submission
INSERT INTO form_submissions (workflow_id, name, email, message)
VALUES ($1, $2, $3, $4)
ON CONFLICT (workflow_id) DO NOTHING;

-- name: finalize_submission
UPDATE form_submissions
SET status = 'finalized',
    external_reply = $2,
    finalize_count = finalize_count + 1,
    finalized_at = now()
WHERE workflow_id = $1
RETURNING workflow_id, finalize_count;
