"""Running one experiment, in the order it runs: experiment (build from a config) -> step (one optimizer
step, one evaluation) -> loop (the run, its checkpoints and result) with files (the run directory,
resuming), progress and result (result.json); launch picks one process or data-parallel (fpt/run/distributed.py).
"""
