"""The control plane: the streaming service, its ingest queue and products database, the
per-group pipeline it hands to workers, and replay of an archive."""
