-- Tenants: every workflow belongs to the tenant of the credential that started it (a child to its
-- parent's), and every read and command through the gateway is scoped to the caller's tenant.
-- Runs from before tenants, and every run started without credentials, are 'default''s.
ALTER TABLE workflows ADD COLUMN tenant text NOT NULL DEFAULT 'default';
-- A tenant's list, newest first (the list's other indexes serve the unscoped list of open mode).
CREATE INDEX workflows_tenant_created_id_idx ON workflows (tenant, created_at DESC, id DESC);

-- The Idempotency-Key namespace is per tenant: two tenants' equal keys are two requests.
ALTER TABLE idempotency_keys ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (tenant, workflow_name, key);
