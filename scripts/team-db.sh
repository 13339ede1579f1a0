#!/usr/bin/env bash
# Create the team's PostgreSQL role and databases for the MLflow server: run it as the
# PostgreSQL superuser, with the role's new password on standard input (never an argument, so
# it stays out of `ps` and the shell history). The script goes in as an argument, since the
# postgres user may not be able to read your checkout:
#
#     sudo -u postgres bash -c "$(cat scripts/team-db.sh)" team-db.sh < mlflow-db-password
#
# It creates (or, run again, keeps) the login role `mlflow` owning three databases: `mlflow`
# for runs and the model registry, `mlflow_auth` for the server's users and permissions, and
# `optuna` for sweeps shared by several machines (Optuna's own tables: its alembic table would
# clash with MLflow's in one database); each run sets the role's password. Other names:
# MLFLOW_DB_ROLE, MLFLOW_DB_NAME, MLFLOW_AUTH_DB_NAME and OPTUNA_DB_NAME (through sudo:
# `sudo -u postgres env MLFLOW_DB_ROLE=... bash -c ...`). Connection settings
# come from the usual libpq variables (PGHOST, PGPORT).
set -euo pipefail
role="${MLFLOW_DB_ROLE:-mlflow}"
database="${MLFLOW_DB_NAME:-mlflow}"
auth_database="${MLFLOW_AUTH_DB_NAME:-mlflow_auth}"
sweep_database="${OPTUNA_DB_NAME:-optuna}"

IFS= read -r password || true
if [ -z "$password" ]; then
    echo "error: no password on standard input; see the usage at the top of scripts/team-db.sh" >&2
    exit 2
fi

# psql reads the password from the environment (not from its command line) and quotes every
# name and value itself (%I, %L), so neither can break out of the SQL. The statement that
# carries the password is kept out of the server's log and statistics.
export MLFLOW_DB_PASSWORD="$password"
psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 \
    -v role="$role" -v database="$database" -v auth_database="$auth_database" \
    -v sweep_database="$sweep_database" <<'SQL'
\set password `printenv MLFLOW_DB_PASSWORD`
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
SET pg_stat_statements.track_utility = off;
SELECT format('CREATE ROLE %I LOGIN', :'role')
    WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', name, :'role')
    FROM unnest(ARRAY[:'database', :'auth_database', :'sweep_database']) AS name
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = name) \gexec
SQL
echo "role $role owns databases $database, $auth_database and $sweep_database"
