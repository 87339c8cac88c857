"""Fixtures shared by the test modules (defined in trainutil.py)."""
from trainutil import token_data  # noqa: F401  (a session fixture: a small real token dataset)
from slurmutil import slurm  # noqa: F401  (a session fixture: the one-node Slurm the Slurm tests submit to)
