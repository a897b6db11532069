"""The engines that run a job's shards: `local` (this process) and `ray` (a Ray cluster). Both get
a `RunContext` from the runner and use the same session, part writer and committer."""
