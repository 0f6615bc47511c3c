-- Named signals that arrived before a wait took them, by signal name, in arrival order:
-- {"decision": [{"id": …, "payload": {…}, "sentBy": …, "at": …}, …]}.
ALTER TABLE workflows ADD COLUMN mailbox jsonb NOT NULL DEFAULT '{}'::jsonb;
