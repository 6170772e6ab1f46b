"""State: the store contract and its SQLite and PostgreSQL databases, the receipt chain, and what
reconciliation needs to know about running instances."""
