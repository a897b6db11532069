"""Output: Parquet parts, the commit log and the state it adds up to, the committer, the lock."""
