"""pairlab's Textual app."""

import os

# Frames at up to 240 a second, not Textual's 60: a key's repaint waits for the next frame
# tick, up to 17 ms at 60 and twice that after a frame that ran long (Textual's timer then
# skips a tick); issue 10's key latency. Frames are drawn only when something changed, so a
# quiet screen costs no more, and a busy one hardly more (a 20k lines/s log: 6% more frames
# than at 120). Read by Textual when it is first imported; a value the user set is kept.
os.environ.setdefault("TEXTUAL_FPS", "240")
