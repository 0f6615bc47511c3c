-- The dashboard's workflow list: newest first with keyset pagination on (created_at, id),
-- filtered by workflow name or status, or found by an id prefix.

-- Name filter (with or without a status filter): an index range in list order.
CREATE INDEX workflows_name_created_idx ON workflows (name, created_at DESC, id DESC);
-- Status filter: the same, replacing the (status, created_at) index of 0001, which cannot serve
-- the id tie-break of the keyset.
CREATE INDEX workflows_status_created_id_idx ON workflows (status, created_at DESC, id DESC);
DROP INDEX workflows_status_idx;
-- Find by id prefix: `id LIKE 'wf_01jd%'` can use a b-tree only with pattern operators (or a C
-- collation), whatever the database's collation is.
CREATE INDEX workflows_id_pattern_idx ON workflows (id text_pattern_ops);
