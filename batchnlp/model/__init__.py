"""Model sources, device and precision, loading."""
