"""Typed records the engine passes around and the journal stores."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum, StrEnum


class RunKind(StrEnum):
    """What a run is for: the journal's `runs.kind`, a plan's, an event's."""

    BASELINE = "baseline"            # the start commit, measured first
    EXPERIMENT = "experiment"        # an accepted proposal's commit
    NOISE = "noise"                  # the best again: the noise floor, or a periodic re-run
    RERUN = "rerun"                  # a candidate again, for the judge
    SPECULATIVE = "speculative"      # a proposal trained ahead of its review
    PROMOTION = "promotion"          # one side of a promotion at a larger depth


class RunStatus(str, Enum):
    MEASURED = "measured"      # the runner's: the evaluator scored it; not judged yet
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    KILLED = "killed"
    CONFIRMING = "confirming"  # measured; the judge wants a noise floor or a re-run first
    HELD = "held"              # an unusually large win, confirmed, waiting for a human
    SPECULATIVE = "speculative"  # trained before a human decided; judged once accepted
    VETOED = "vetoed"          # a speculative run whose proposal a human vetoed
    REVERTED = "reverted"      # kept, then the best's re-runs showed it was noise (Revert)


class DecisionKind(str, Enum):
    ACCEPT = "accept"
    EDIT = "edit"
    VETO = "veto"


class ProposalState(str, Enum):
    DRAFTING = "drafting"
    PENDING = "pending"      # waiting for review (or for the trainer in auto mode)
    ACCEPTED = "accepted"    # decided, queued to train
    TRAINING = "training"
    DONE = "done"
    VETOED = "vetoed"
    STALE = "stale"          # no longer applies to the best; sent back for a redraft
    HELD = "held"            # trained to an unusually large win: a human keeps or vetoes it


@dataclass
class Usage:
    """Tokens and cost of one proposal's drafting."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: "Usage") -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.cost_usd += other.cost_usd


@dataclass
class Draft:
    """What an agent hands back: the full new text of each target file it changed."""

    description: str
    hypothesis: str
    files: dict[str, str]            # relative path -> new full text
    reasoning: str = ""
    usage: Usage = field(default_factory=Usage)


@dataclass
class Proposal:
    id: int
    description: str
    hypothesis: str
    diff: str                        # unified diff computed by the engine, never by the model
    base_commit: str
    agent: str
    files: dict[str, str]            # relative path -> new full text
    reasoning: str = ""
    usage: Usage = field(default_factory=Usage)
    state: ProposalState = ProposalState.PENDING
    created_at: float = 0.0
    notes: list[str] = field(default_factory=list)   # the human's steering notes its draft had

    def commit_message(self, decision: Decision | None) -> str:
        """The message of the commit this proposal trains as; its trailers name the
        proposal, the agent and a human's edit."""
        lines = [self.description.strip().splitlines()[0][:72] if self.description.strip()
                 else f"proposal {self.id}", ""]
        if self.hypothesis:
            lines += [f"Hypothesis: {self.hypothesis.strip()}", ""]
        lines.append(f"pairlab-proposal: {self.id}")
        lines.append(f"pairlab-agent: {self.agent}")
        if decision and decision.kind == DecisionKind.EDIT:
            lines.append("pairlab-edited-by: human")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["state"] = self.state.value
        return d


@dataclass
class Decision:
    proposal_id: int
    kind: DecisionKind
    who: str                         # "human" | "auto"
    reason: str = ""
    edited_diff: str = ""            # the human's changes relative to the agent's version
    at: float = 0.0


@dataclass
class RunResult:
    """Outcome of one training run; val_bpb comes from the harness's result file only."""

    run_id: str
    status: RunStatus
    val_bpb: float | None = None
    memory_gb: float = 0.0
    training_seconds: float = 0.0
    total_seconds: float = 0.0
    num_steps: int = 0
    total_tokens: int = 0
    num_params: int = 0
    device: str = ""
    message: str = ""                # why it crashed / timed out, in words for the user
    log_tail: str = ""
    log_path: str = ""
    metrics: dict = field(default_factory=dict)   # the whole validated result file
    confined: bool = True            # False: train.py ran unconfined (the runner sets both)
    metric_verified: bool = True     # False: the metric is train.py's own summary line

    @property
    def integrity_label(self) -> str:
        """What the user is told about where val_bpb came from; "" when nothing to flag."""
        return integrity_label(self.confined, self.metric_verified)


UNVERIFIED_LABEL = "metric reported by train.py (not verified)"
UNCONFINED_LABEL = "unconfined"


def integrity_label(confined: bool, metric_verified: bool) -> str:
    if not metric_verified:
        return UNVERIFIED_LABEL
    return "" if confined else UNCONFINED_LABEL


# The keep rules a workspace may pick (engine/loop/keep_rule.py holds them).
KEEP_RULES = ("margin", "sequential", "debiased")


@dataclass
class KeepMeasure:
    """What a keep decision rested on (engine/loop/keep_rule.py): the runs of the best and of the
    candidate, the pooled noise sigma and the bounds the improvement was held against."""

    n_best: int
    best_mean: float
    n_candidate: int
    candidate_mean: float
    sigma: float | None            # None while no commit has been run twice
    noise_dof: int
    improvement: float             # best_mean - candidate_mean: positive is better
    margin: float | None           # the improvement that keeps; None without a sigma
    drop_margin: float | None = None   # the sequential rule's: at or below it, it goes

    @property
    def sigmas(self) -> float | None:
        """The improvement in units of sigma."""
        return self.improvement / self.sigma if self.sigma else None

    def describe(self) -> str:
        """'n=3 mean 0.991200 vs best 0.995500 (n=4), sigma 0.002100 margin 0.004300
        (+2.0 sigma)'; the sequential rule's 'keep at 0.004300 drop at 0.000800' for the
        margin."""
        sigma = "sigma n/a" if self.sigma is None else f"sigma {self.sigma:.6f}"
        if self.drop_margin is not None:
            bounds = f" keep at {self.margin:.6f} drop at {self.drop_margin:.6f}"
        else:
            bounds = "" if self.margin is None else f" margin {self.margin:.6f}"
        sigmas = "" if self.sigmas is None else f" ({self.sigmas:+.1f} sigma)"
        return (f"n={self.n_candidate} mean {self.candidate_mean:.6f} vs best "
                f"{self.best_mean:.6f} (n={self.n_best}), {sigma}{bounds}{sigmas}")


@dataclass
class Revert:
    """A kept change that the best's re-runs showed was noise (engine/loop/keep_rule.recheck):
    the research branch went back to the best before it."""

    measure: KeepMeasure           # the kept change's runs (candidate) vs its predecessor's
    back_to: str                   # the commit the research branch went back to
    run_id: str                    # the re-run of the best that decided it
    reason: str
    at: float = 0.0

    def describe(self) -> str:
        """'reverted to 1a2b3c4: n=3 mean ... vs best ... (n=4), ...': the recheck's figures,
        the kept change as the candidate, the best before it as the best."""
        return f"reverted to {self.back_to[:7]}: {self.measure.describe()}"


@dataclass
class PromotionRung:
    """A kept change trained at a larger depth (engine/loop/promotion.py): did its win hold?"""

    depth: int
    held: bool | None = None         # None: still being measured


@dataclass
class Experiment:
    """One row of the experiments table: a proposal that trained (or the baseline)."""

    id: int
    proposal_id: int | None
    commit: str
    status: RunStatus
    val_bpb: float | None
    memory_gb: float
    description: str
    decided_by: str
    run_id: str
    started_at: float
    finished_at: float | None
    log_path: str
    kind: RunKind = RunKind.EXPERIMENT
    speculative: bool = False        # trained before a human accepted it (kind speculative)
    confined: bool = True
    metric_verified: bool = True
    measure: KeepMeasure | None = None   # the judge's figures, for a judged experiment
    revert: Revert | None = None         # status reverted: why, and where the branch went
    promotions: list[PromotionRung] = field(default_factory=list)  # its rungs on the ladder
    message: str = ""                # why a run that got no metric ended, whole (redacted)

    @property
    def integrity_label(self) -> str:
        return integrity_label(self.confined, self.metric_verified)


@dataclass
class HistoryItem:
    """One finished or vetoed experiment as the agent is told about it."""

    description: str
    hypothesis: str = ""
    status: str = ""                 # keep | discard | crash | timeout | vetoed | ...
    val_bpb: float | None = None
    delta: float | None = None       # val_bpb - best before it (negative is better)
    decided_by: str = ""
    veto_reason: str = ""
    human_edit_diff: str = ""        # what the human changed in the agent's patch
    diff: str = ""
    message: str = ""                # crash or timeout explanation (untrusted log text excluded)


@dataclass(frozen=True)
class PromotionRecord:
    """One rung of one change, as the journal holds it."""

    id: int
    run_id: str                     # the kept experiment's run
    depth: int
    baseline_runs: tuple[float, ...] = ()   # measured val_bpb at this depth, in run order
    change_runs: tuple[float, ...] = ()
    held: bool | None = None        # None: still being measured
