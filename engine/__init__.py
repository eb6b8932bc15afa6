"""The engine: the research loop with a human in it, as plain Python (no Textual import).

Packages by role, each importing only from the floors below it (tests/test_architecture.py
holds the rule and fails the suite when an arrow points up):

    engine.service     the socket: protocol, server, client
    engine.session     the public API (Session, SessionSettings); engine.report beside it
    engine.loop        the coordinator and the parts it dispatches to
    engine.scale       trainer slots, the Ray executor and worker
    engine.run         one run: runner, process group, output, watchdog, confinement,
                       compile cache, the evaluator's hand-off, the monitor, the doctor
    engine.journal     the SQLite record        engine.agents   Claude and the tuner
    engine.workspace   the git repository, its settings, the patch policy
    engine.base        records, events, commands, and what every floor shares
"""
