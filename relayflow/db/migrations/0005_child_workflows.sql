-- Child workflows: a workflow started by another workflow's `child` step names that step
-- (ParentRef: workflowId, stepName, stepKey, attempt); NULL for a top-level workflow.
ALTER TABLE workflows ADD COLUMN parent jsonb;
-- A parent's detail page lists its children.
CREATE INDEX workflows_parent_idx ON workflows ((parent ->> 'workflowId'))
    WHERE parent IS NOT NULL;
