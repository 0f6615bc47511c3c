"""`batchImport`: import a list of stock lines, one idempotent row per line, summarise them and,
when asked, notify the owner through a child workflow (`notification`).

Served by the README's run command: `POST /workflows/batchImport` with
`{"items": [{"sku": "A-1", "qty": 3}, …], "notify": true}`.
"""
