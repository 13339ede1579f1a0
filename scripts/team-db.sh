#!/usr/bin/env bash
# Create the team's PostgreSQL role and databases for the MLflow server: run it as the
# PostgreSQL superuser, with the role's new password on standard input (never an argument, so
# it stays out of `ps` and the shell history):
#
#     sudo -u postgres bash scripts/team-db.sh < mlflow-db-password
#
# It creates (or, run again, keeps) the login role `mlflow` (MLFLOW_DB_ROLE), owner of two
# databases: `mlflow` for runs and the model registry (MLFLOW_DB_NAME) and `mlflow_auth` for
# the server's users and permissions (MLFLOW_AUTH_DB_NAME); a second run sets the password
# again. Connection settings come from the usual libpq variables (PGHOST, PGPORT).
set -euo pipefail
role="${MLFLOW_DB_ROLE:-mlflow}"
database="${MLFLOW_DB_NAME:-mlflow}"
auth_database="${MLFLOW_AUTH_DB_NAME:-mlflow_auth}"

IFS= read -r password || true
if [ -z "$password" ]; then
    echo "error: no password on standard input; run: bash scripts/team-db.sh < password-file" >&2
    exit 2
fi

# psql reads the password from the environment (\getenv, PostgreSQL 15+) and quotes every
# name and value itself (%I, %L), so neither can break out of the SQL.
export MLFLOW_DB_PASSWORD="$password"
psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 \
    -v role="$role" -v database="$database" -v auth_database="$auth_database" <<'SQL'
\getenv password MLFLOW_DB_PASSWORD
SELECT format('CREATE ROLE %I LOGIN', :'role')
    WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', name, :'role')
    FROM unnest(ARRAY[:'database', :'auth_database']) AS name
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = name) \gexec
SQL
echo "role $role owns databases $database and $auth_database"
