"""The registries are complete: every entry carries what the code elsewhere asks it for.

Tests parametrised over TASKS and over the tiny checkpoints (conftest's TINY_CONFIGS) pick up a new
entry by themselves; these checks make sure a new entry cannot skip the parts they rely on.
"""
import csv

from conftest import TINY_CONFIGS

from fpt.backbones import BACKBONES
from fpt.backbones.architectures import ARCHITECTURES
from fpt.commands.backbones import installable
from fpt.commands.data import preparable
from fpt.report import REFERENCE
from fpt.tasks import TASKS


def test_every_architecture_has_a_tiny_test_config():
    missing, extra = set(ARCHITECTURES) - set(TINY_CONFIGS), set(TINY_CONFIGS) - set(ARCHITECTURES)
    assert not missing, (f"architecture(s) {sorted(missing)} have no tiny test config: add one to TINY_CONFIGS in "
                         f"tests/conftest.py (keyed by model_type), so the tests over tiny_backbone cover them")
    assert not extra, (f"TINY_CONFIGS in tests/conftest.py has {sorted(extra)}, which fpt/backbones/architectures.py "
                       f"ARCHITECTURES does not define")


def test_tasks_with_files_can_prepare_them():
    """A task that reads files (`data_folder`) has a `prepare_data` for `fpt data prepare`; a generated one has
    neither; the CLI's choices are the ones that prepare."""
    for name, cls in TASKS.items():
        assert (cls.data_folder is None) == (cls.prepare_data is None), name
    assert preparable() == [n for n, cls in TASKS.items() if cls.prepare_data is not None]
    assert preparable()  # the built-in data tasks


def test_paper_columns_are_in_the_reference_file():
    with open(REFERENCE) as f:
        columns = set(csv.DictReader(f).fieldnames)
    named = {name: cls.paper_column for name, cls in TASKS.items() if cls.paper_column}
    assert set(named.values()) <= columns, named
    assert len(set(named.values())) == len(named)  # one column per task


def test_installable_backbones_have_an_installer():
    """`fpt backbones install` offers the entries with an installer module: PACKAGES to pip-install and prepare()."""
    import importlib

    assert installable() == ["gemma3-270m", "mpnet"]
    for name in installable():
        mod = importlib.import_module(BACKBONES.get(name).installer)
        assert mod.PACKAGES and callable(mod.prepare), name


def test_every_model_row_names_its_default_groups():
    """fpt/groups.py DEFAULT_TRAIN (what the config trains when --train is unset) covers exactly the rows."""
    from fpt.bodies import MODELS
    from fpt.groups import DEFAULT_TRAIN

    assert list(MODELS) == list(DEFAULT_TRAIN)


def test_config_sits_at_the_bottom_of_the_import_graph():
    """fpt/config.py validates a config without importing the modules that build models (or torch)."""
    import subprocess
    import sys

    code = "import sys, fpt.config; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('fpt', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert set(out) <= {"fpt", "fpt.config", "fpt.errors", "fpt.groups", "fpt.registry"}, out
