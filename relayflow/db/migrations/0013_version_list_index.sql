-- The list filtered by version alone (`GET /workflows?version=`): an index range in list order,
-- like the name and status filters (0004). Without it the list walked workflows_created_at_idx
-- and dropped the rows of other versions as it went, so a page of a version with few runs among
-- many read most of the table. (A version with a name is workflows_name_version_idx's, 0011.)
CREATE INDEX workflows_version_created_id_idx ON workflows (version, created_at DESC, id DESC);
