"""One training run: the runner (process group, output, results, watchdog), the
confinement of train.py, the commit's compile cache, the evaluator's hand-off, the device
monitor, and the doctor's checks. Imports engine.workspace, engine.base, nanochat."""
