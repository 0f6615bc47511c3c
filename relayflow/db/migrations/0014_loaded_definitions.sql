-- What each orchestrator replica loads, so that anyone can see which runs are stranded (a run
-- whose version no live replica loads has its inputs dead-lettered until that version is
-- deployed again). A replica upserts one row per (workflow, version) it loads at start-up and
-- refreshes `seen_at` every `RELAYFLOW_ANNOUNCE_INTERVAL`; it deletes its rows when it stops
-- cleanly. A row not seen for three intervals (a replica that died) does not count, and the
-- next refresh of any replica deletes it. `seen_at` is the database's clock, never a replica's.
CREATE TABLE loaded_definitions (
    replica text NOT NULL,
    name text NOT NULL,
    version text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replica, name, version)
);
