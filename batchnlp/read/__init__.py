"""Reading input: files, Hugging Face datasets, the shard plan."""
