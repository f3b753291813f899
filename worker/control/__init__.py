"""The control worker's work: ``planner`` (splitting a job into shards), ``finalize`` (the
manifest and the final state), ``reconciler`` (re-sending lost or expired work), ``drops`` (drop
folders)."""
