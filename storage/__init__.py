"""TimescaleDB / PostgreSQL storage: migrations, the idempotent sink."""
