-- Empty on purpose. Version 2 used to create a table of the seed application; that table now
-- belongs to the application's own migration set (see relayflow/db/migrate.py: every
-- application's package has its own numbering). The number stays taken: a database migrated
-- before the move recorded ('relayflow.db', 2), and would silently skip any new version 2.
SELECT 1;
