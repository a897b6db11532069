"""The engines that schedule a job's work: `local` (this process) and `ray` (a Ray cluster). The
runner hands either the decision's shards and the parts to retry; both run them through the same
`Worker` (work.py) and report each durable part to the same `Recorder` (record.py)."""
