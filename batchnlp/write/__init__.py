"""Output: Parquet parts, the manifest, the lock."""
