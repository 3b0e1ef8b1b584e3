"""Where the data lands: ClickHouse, through clickhouse-connect (chdb:// or http(s)://)."""
