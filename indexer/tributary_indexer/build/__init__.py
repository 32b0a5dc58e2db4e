"""The offline index build: builder, plan, staging, shards, index layout, manifest and
verification."""
