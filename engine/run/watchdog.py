"""When is a training run hung? Deadlines that follow the run's own progress.

A fixed deadline from the start (twice the budget plus a grace) kills honest runs whose
untimed warm-up is slow: autoresearch does not charge its first steps to the budget, and on a
small CPU each of those can take 20 s. So the watchdog reads the progress lines instead:

- silent: no output at all for `stall_s`: stalled, whatever the phase;
- timed: once the progress line's percent moves, the run's own clock has started; it must
  end within `overrun_factor` times its budget plus `grace_s` for evaluation, counted from
  when its timed steps began. The budget is the engine's, or the one the line states
  (remaining / share left) where that is longer: the line's percent lags its remaining by a
  step, so with slow steps the stated one comes out short;
- warming up: steps print but the percent stays at 0: it is alive, only stalls kill it;
- starting: no progress line yet and nothing printed since its first `grace_s` seconds
  (imports, data, a silent torch.compile of the first step, minutes on a busy machine):
  only stalls kill it;
- no progress line but output beyond start-up (a script that prints its own way): the
  fixed deadline, `overrun_factor` times the budget plus `grace_s` from the start;
- `hard_cap_s`, when the user sets one, is an absolute limit from the start.

Pure bookkeeping on times the runner passes in, so it is tested without processes.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_STALL_S = 600.0    # longer than a silent torch.compile or evaluation on a slow machine


@dataclass
class Watchdog:
    budget_s: float                  # the budget the engine expects (the run's own, if adopted)
    started: float                   # monotonic time the run started
    grace_s: float = 120.0           # start-up, compile and evaluation on top of the budget
    stall_s: float | None = DEFAULT_STALL_S
    hard_cap_s: float | None = None  # absolute limit from the start; None: follow progress
    overrun_factor: float = 2.0
    timed_since: float | None = None     # when the run's timed steps began (estimated)
    own_budget_s: float | None = None    # the budget its progress line states
    saw_progress: bool = False

    def progress(self, now: float, percent: float, remaining_s: float) -> None:
        """A parsed progress line: `percent` of the run's own budget done, `remaining_s` left."""
        self.saw_progress = True
        if self.timed_since is not None or not percent > 0:
            return
        done = min(percent, 100.0) / 100
        stated = remaining_s / (1 - done) if done < 1 and remaining_s > 0 else 0.0
        self.own_budget_s = max(self.budget_s, stated)
        self.timed_since = now - done * self.own_budget_s

    def verdict(self, now: float, last_output_at: float) -> str | None:
        """Why the run must be killed now, in words; None while it may go on."""
        budget = _secs(self.budget_s)
        if self.hard_cap_s is not None and now - self.started > self.hard_cap_s:
            return f"no result after {_secs(self.hard_cap_s)}s (budget {budget}s): killed"
        if self.stall_s is not None and now - last_output_at > self.stall_s:
            return (f"stalled: no output for {_secs(self.stall_s)}s (budget {budget}s): "
                    "killed")
        if self.hard_cap_s is not None:
            return None
        if self.timed_since is not None:
            own = self.own_budget_s
            limit = self.overrun_factor * own + self.grace_s
            if now - self.timed_since > limit:
                return (f"still running {_secs(now - self.timed_since)}s after its timed "
                        f"training began, far past its budget of {_secs(own)}s (limit "
                        f"{self.overrun_factor:g} x budget + {_secs(self.grace_s)}s): killed")
            return None
        starting = last_output_at - self.started <= self.grace_s
        if not self.saw_progress and not starting:
            limit = self.overrun_factor * self.budget_s + self.grace_s
            if now - self.started > limit:
                return f"no result after {_secs(limit)}s (budget {budget}s): killed"
        return None


def _secs(seconds: float) -> str:
    return f"{round(seconds, 1):g}"
