"""The loop: the coordinator, the one thread that owns proposals, git and the journal, and
the parts it dispatches to: the planner (what to start), the judge and the keep rule (keep,
discard, confirm), drafting, run outcomes, speculation, promotion, restore, program edits,
the workers. Imports engine.scale, engine.run, engine.journal, engine.agents,
engine.workspace, engine.base."""
