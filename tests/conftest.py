"""Fixtures shared by the test modules (defined in trainutil.py), and the grouping of tests on
pytest-xdist workers."""
import pytest
from trainutil import token_data  # noqa: F401  (a session fixture: a small real token dataset)
from slurmutil import slurm  # noqa: F401  (a session fixture: the one-node Slurm the Slurm tests submit to)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (README: ``-n 2 --dist loadgroup``) a module's tests run on one worker,
    so its module fixtures are made once, and the modules that submit to the one-node Slurm
    share a worker (one cluster, started once, never by two workers at a time)."""
    slurm_modules = {item.module.__name__ for item in items if "slurm" in getattr(item, "fixturenames", ())}
    for item in items:
        name = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("slurm" if name in slurm_modules else name))
