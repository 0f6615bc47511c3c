-- A run is pinned to the version of its definition it started on (NULL: started before
-- versions were recorded; such a run takes the newest version loaded).
ALTER TABLE workflows ADD COLUMN version text;
CREATE INDEX workflows_name_version_idx ON workflows (name, version, created_at DESC);
