"""More than one run at a time: trainer slots (one per GPU, each in its own git worktree)
and the Ray executor with its worker. Imports engine.run, engine.workspace, engine.base."""
