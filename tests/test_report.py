"""`pairlab report` from a real journal: the PNG is a real image, the Markdown has the numbers."""

from __future__ import annotations

import struct

import pytest

from engine.base.records import (Decision, DecisionKind, KeepMeasure, Proposal, RunResult,
                                 RunStatus, Usage)
from engine.journal import Journal, journal_path
from engine.report import summarize, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def add_run(journal, kind, commit, status, val_bpb, description="", proposal_id=None,
            at=0.0, training_seconds=300.0, measure=None):
    run_id = f"run-{commit}-{kind}-{at}"
    journal.start_run(run_id, commit * 40, kind, proposal_id=proposal_id,
                      description=description, started_at=at)
    journal.finish_run(RunResult(run_id=run_id, status=status, val_bpb=val_bpb,
                                 memory_gb=1.5 if val_bpb else 0.0,
                                 training_seconds=training_seconds,
                                 total_seconds=training_seconds + 20),
                       finished_at=at + training_seconds + 20, measure=measure)


def add_proposal(journal, description, decision, who="human", cost=0.10, reason="",
                 edited_diff=""):
    pid = journal.add_proposal(Proposal(
        id=0, description=description, hypothesis="h", diff="d", base_commit="0" * 40,
        agent="claude", files={"train.py": "x"},
        usage=Usage(input_tokens=10_000, output_tokens=2_000, cache_read_tokens=5_000,
                    cache_write_tokens=1_000, cost_usd=cost)))
    journal.record_decision(Decision(pid, decision, who, reason=reason, edited_diff=edited_diff))
    return pid


@pytest.fixture
def journal(tmp_path):
    with Journal(journal_path(tmp_path / "ws")) as j:
        yield j


@pytest.fixture
def session(journal):
    """A small research session: baseline, two repeats, keeps, a discard, a crash, a veto."""
    add_run(journal, "baseline", "0", RunStatus.KEEP, 1.000000, at=0)
    add_run(journal, "noise", "0", RunStatus.DISCARD, 1.002000, at=400)
    add_run(journal, "noise", "0", RunStatus.DISCARD, 0.999000, at=800)
    lr = add_proposal(journal, "raise matrix LR to 0.04", DecisionKind.ACCEPT)
    add_run(journal, "experiment", "1", RunStatus.KEEP, 0.990000, proposal_id=lr, at=1200,
            measure=KeepMeasure(n_best=3, best_mean=1.000333, n_candidate=1,
                                candidate_mean=0.99, sigma=0.001528, noise_dof=2,
                                improvement=0.010333, margin=0.007929))
    gelu = add_proposal(journal, "switch | ReLU² to GeLU", DecisionKind.ACCEPT, who="auto")
    add_run(journal, "experiment", "2", RunStatus.DISCARD, 0.995000, proposal_id=gelu, at=1600)
    wide = add_proposal(journal, "double the MLP width", DecisionKind.ACCEPT)
    add_run(journal, "experiment", "3", RunStatus.CRASH, None, proposal_id=wide, at=2000)
    add_proposal(journal, "remove the warmup", DecisionKind.VETO, reason="tried before")
    depth = add_proposal(journal, "depth 6 with a narrower model", DecisionKind.EDIT,
                         edited_diff="-DEPTH = 8\n+DEPTH = 6\n")
    add_run(journal, "experiment", "4", RunStatus.KEEP, 0.975000, proposal_id=depth, at=2400)
    return journal


def test_report_writes_a_png_and_markdown_with_the_right_numbers(tmp_path, session):
    png, md = write_report(session, tmp_path / "out")
    assert png.name == "progress.png" and md.name == "report.md"
    assert png.parent == md.parent == tmp_path / "out"
    assert png_size(png) == (1600, 800)
    assert png.stat().st_size > 20_000      # a drawn chart, not an empty canvas

    text = md.read_text()
    # experiments = kept + discarded + crashed + vetoed; the noise repeats are counted apart
    for row in ("| runs (all kinds) | 7 |",
                "| experiments (kept + reverted + discarded + crashed + vetoed + held) | 5 |",
                "| kept | 2 |", "| discarded | 1 |", "| crashed or timed out | 1 |",
                "| vetoed | 1 |", "| noise repeats (measurements, counted apart) | 2 |",
                "| confirmation re-runs (counted apart) | 0 |",
                "| proposals | 5 |", "| human edits | 1 |"):
        assert row in text
    assert "- Baseline: 1.000000 (commit `0000000`)" in text
    assert "- Best: 0.975000 (commit `4444444`, experiment #7)" in text
    assert "- Improvement: 0.025000 (2.50%)" in text
    assert "- Noise band: 0.999000 – 1.002000 (spread 0.003000)" in text
    kept_table = text[text.index("## Kept changes"):text.index("## Cost")]
    assert kept_table.index("raise matrix LR to 0.04") < kept_table.index("depth 6 with")
    # beside each keep, what the judge rested it on: n, the best's mean (n), sigma, margin
    assert ("| 4 | `1111111` | 0.990000 | -0.010000 | 1 | 1.000333 (3) | 0.001528 | 0.007929 "
            "| human | raise matrix LR to 0.04 |") in text
    assert "| 7 | `4444444` | 0.975000 | -0.015000 | — | — | — | — | human |" in text
    assert "GeLU" not in kept_table and "remove the warmup" not in text
    assert "- Agent cost: $0.50 over 5 proposals" in text
    assert "- Tokens: 50,000 input, 10,000 output, 25,000 cache read, 5,000 cache write" in text
    assert "- Training: 35m 00s over 7 runs" in text
    assert "- Wall clock, first run start to last run end: 45m 20s" in text
    assert "![val_bpb over experiments](progress.png)" in text


def test_summary_takes_the_noise_floor_from_state_without_repeats(journal):
    add_run(journal, "baseline", "0", RunStatus.KEEP, 1.0)
    journal.set_state("noise_floor", 0.004)
    summary = summarize(journal)
    assert summary.noise_band == pytest.approx((0.998, 1.002))
    assert summary.improvement == 0.0


def test_report_of_an_empty_journal_still_writes_both_files(tmp_path, journal):
    png, md = write_report(journal, tmp_path / "empty")
    assert png_size(png) == (1600, 800)
    text = md.read_text()
    assert "| runs (all kinds) | 0 |" in text
    assert "No measured run yet." in text and "No change kept yet." in text


def test_a_pipe_in_a_description_does_not_break_the_table(tmp_path, journal):
    add_run(journal, "baseline", "0", RunStatus.KEEP, 1.0)
    pid = add_proposal(journal, "a | b", DecisionKind.ACCEPT)
    add_run(journal, "experiment", "1", RunStatus.KEEP, 0.9, proposal_id=pid, at=10)
    _, md = write_report(journal, tmp_path)
    assert "| a \\| b |" in md.read_text()


def test_counts_add_up_with_noise_repeats_and_a_confirmation_counted_apart(journal):
    """Issue 8/12: one experiment, confirmed by a re-run, after two noise repeats, used to
    read '2 discarded'; the identity experiments = kept + discarded + crashed + vetoed holds."""
    add_run(journal, "baseline", "0", RunStatus.KEEP, 1.000, at=0)
    add_run(journal, "noise", "0", RunStatus.DISCARD, 1.004, at=400)
    add_run(journal, "noise", "0", RunStatus.DISCARD, 0.998, at=800)
    pid = add_proposal(journal, "a small win", DecisionKind.ACCEPT)
    add_run(journal, "experiment", "1", RunStatus.DISCARD, 1.001, proposal_id=pid, at=1200)
    add_run(journal, "rerun", "1", RunStatus.DISCARD, 1.002, proposal_id=pid, at=1600)
    add_proposal(journal, "vetoed one", DecisionKind.VETO, reason="no")
    t = journal.totals()
    assert (t.experiments, t.kept, t.discarded, t.crashed, t.vetoed) == (2, 0, 1, 0, 1)
    assert (t.noise_repeats, t.confirmations) == (2, 1)
    assert journal.summary_line() == ("2 experiments: 0 kept, 1 discarded, 0 crashed, 1 vetoed;"
                                      " 2 noise repeats, 1 confirmation re-runs")


def test_an_interrupted_run_is_not_drawn_as_a_crash(journal):
    from engine.report import chart_points
    add_run(journal, "baseline", "0", RunStatus.KEEP, 1.0, at=0)
    pid = add_proposal(journal, "cut off by a stop", DecisionKind.ACCEPT)
    add_run(journal, "experiment", "1", RunStatus.INTERRUPTED, None, proposal_id=pid, at=10)
    add_run(journal, "experiment", "2", RunStatus.CRASH, None, proposal_id=pid, at=400)
    points = chart_points(summarize(journal))
    assert [e.commit[0] for e in points.crashed] == ["2"]
    assert [e.commit[0] for e in points.kept + points.others] == ["0"]


def test_runs_without_a_verified_or_confined_metric_are_labelled(tmp_path, journal):
    add_run(journal, "baseline", "0", RunStatus.KEEP, 1.0)
    for commit, at, confined, verified in (("1", 10, False, True), ("2", 20, True, False)):
        pid = add_proposal(journal, f"change {commit}", DecisionKind.ACCEPT)
        run_id = f"run-{commit}"
        journal.start_run(run_id, commit * 40, "experiment", proposal_id=pid, started_at=at)
        journal.finish_run(RunResult(run_id=run_id, status=RunStatus.KEEP,
                                     val_bpb=1.0 - at / 100, confined=confined,
                                     metric_verified=verified), finished_at=at + 5)
    labels = {e.run_id: e.integrity_label for e in journal.experiments()}
    assert labels["run-1"] == "unconfined"
    assert labels["run-2"] == "metric reported by train.py (not verified)"
    _, md = write_report(journal, tmp_path)
    text = md.read_text()
    assert "| 0.900000 (unconfined) |" in text
    assert "| 0.800000 (metric reported by train.py (not verified)) |" in text
    assert '- Some runs are marked "unconfined"' in text
    tsv = journal.results_tsv().splitlines()
    assert tsv[-1].endswith("\tchange 2 [metric reported by train.py (not verified)]")
    assert tsv[-2].endswith("\tchange 1")          # results.tsv flags only the unverified


def test_a_reverted_keep_is_shown_as_such_with_what_it_was_kept_and_reverted_on(tmp_path,
                                                                               journal):
    from engine.base.records import Revert
    from engine.report import chart_points
    add_run(journal, "baseline", "0", RunStatus.KEEP, 1.0, at=0)
    pid = add_proposal(journal, "warmdown 0.5 -> 0.6", DecisionKind.ACCEPT)
    kept_on = KeepMeasure(n_best=3, best_mean=1.0, n_candidate=1, candidate_mean=0.99,
                          sigma=0.004, noise_dof=2, improvement=0.01, margin=0.0093,
                          drop_margin=-0.002)
    add_run(journal, "experiment", "1", RunStatus.KEEP, 0.99, proposal_id=pid, at=10,
            measure=kept_on)
    add_run(journal, "noise", "1", RunStatus.DISCARD, 1.006, at=400)
    again = KeepMeasure(n_best=3, best_mean=1.0, n_candidate=2, candidate_mean=0.998,
                        sigma=0.005, noise_dof=3, improvement=0.002, margin=0.011,
                        drop_margin=0.0035)
    journal.revert_keep("run-1-experiment-10", Revert(again, "0" * 40, "run-1-noise-400",
                                                      "reverted: over 2 runs"))
    png, md = write_report(journal, tmp_path)
    text = md.read_text()
    assert "| kept | 0 |" in text
    assert "| reverted (kept, then the best's re-runs showed noise) | 1 |" in text
    assert "No change kept yet." in text
    reverted = text[text.index("## Reverted keeps"):text.index("## Promotions")]
    assert ("| 2 | `1111111` | 1 | 1.000000 (3) | 0.004000 | 0.009300 (drop -0.002000) | "
            "2 | 1.000000 (3) | 0.005000 | 0.003500 | `0000000` | warmdown 0.5 -> 0.6 |"
            ) in reverted
    assert "- Best: 1.000000 (commit `0000000`" in text
    points = chart_points(summarize(journal))
    assert [e.commit[0] for e in points.reverted] == ["1"]
    assert [e.commit[0] for e in points.kept] == ["0"]
    assert png_size(png) == (1600, 800)
