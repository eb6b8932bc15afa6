"""What every floor of the engine shares: the records (proposals, runs, decisions), the
events, the commands, the protected markers, the git helper, train.py's literal constants,
the visible devices. Imports nothing of the engine but itself (and nanochat's file names)."""
