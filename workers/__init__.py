"""Per-block worker programs, installed as the package ``blockwise_workers``.

A worker is started by anything (the local profile, a SLURM array task),
reads the run config, opens its stores once, pulls blocks from the stage's
daisy scheduler until none are left, and calls the stage's block function.
No algorithm lives here.
"""
