"""The data plane: moves HTTP and websocket bytes between clients and backends (no policy)."""
