"""Everything that talks SQL: the pool, the embedded server, migrations, the listener, queries."""
