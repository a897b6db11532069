"""Sorting and batching tokenized rows."""
