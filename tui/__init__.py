"""pairlab's Textual app."""

import os

# Frames at up to 120 a second, not Textual's 60: a key's repaint waits for the next frame
# tick, up to 17 ms at 60 (issue 10's key latency). Frames are drawn only when something
# changed, so a quiet screen costs no more. Read by Textual when it is first imported; a
# value the user set is kept.
os.environ.setdefault("TEXTUAL_FPS", "120")
