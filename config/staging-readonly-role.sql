-- A PostgreSQL role that can only read: give it to read-only safe-mcp targets
-- (targets.app in staging.example.toml). Run as the database owner or a superuser:
--   psql -d app -f config/staging-readonly-role.sql
-- then set its password with \password safe_mcp_reader and store it for safe-mcp:
--   safe-mcp secrets set staging-db-reader
-- `safe-mcp check` connects with it and says what it can do; it should report no write access.
-- Rename safe_mcp_reader and app to yours (a role name is global to the cluster).

CREATE ROLE safe_mcp_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  CONNECTION LIMIT 8;
-- Every transaction it starts is read-only unless it asks otherwise; safe-mcp asks for READ ONLY anyway.
ALTER ROLE safe_mcp_reader SET default_transaction_read_only = on;
ALTER ROLE safe_mcp_reader SET statement_timeout = '30s';

GRANT CONNECT ON DATABASE app TO safe_mcp_reader;
GRANT USAGE ON SCHEMA public TO safe_mcp_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO safe_mcp_reader;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO safe_mcp_reader;
-- Tables created later by the role running this script are readable too.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO safe_mcp_reader;

-- Before PostgreSQL 15 every role may create objects in schema public and temp tables in the
-- database; take both away from everyone (grant CREATE back to your application's role if it needs it).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE CREATE, TEMPORARY ON DATABASE app FROM PUBLIC;
