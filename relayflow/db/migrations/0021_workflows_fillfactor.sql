-- Room on each page of `workflows` for the next versions of its rows. A run's row is updated
-- once per step; an update that finds room on its page and changes no indexed column is HOT and
-- writes none of the table's ten index entries. Measured with `bench --only db-cost` (five-step
-- workflows at 50 in flight): HOT updates per run 2.2 of 5 at the default fillfactor of 100,
-- 3.4 at 70, 3.8 at 50 (the last update, which sets status and finished_at, never is); the table
-- takes twice the pages, which retention keeps bounded. Pages filled from now on keep half free;
-- existing ones as they are.
ALTER TABLE workflows SET (fillfactor = 50);
