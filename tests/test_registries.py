"""The registries are complete: every entry carries what the code elsewhere asks it for.

Tests parametrised over TASKS and over ARCHITECTURES (the tiny checkpoints of conftest.py, built from each
row's `tiny_config`) pick up a new entry by themselves; these checks make sure a new entry cannot skip the
parts they rely on.
"""
import csv

from fpt.backbones import BACKBONES
from fpt.backbones.architectures import ARCHITECTURES, linear_layer_types
from fpt.commands.backbones import installable
from fpt.commands.data import preparable
from fpt.report import REFERENCE
from fpt.tasks import TASKS


def test_every_architecture_has_a_tiny_test_config_and_an_attention_map_class():
    for name, arch in ARCHITECTURES.items():
        assert arch.tiny_config, (f"architecture {name!r} has no tiny_config (fpt/backbones/architectures.py): "
                                  f"tests/conftest.py builds a tiny random model of every row from it")
        assert arch.attention_map_class in arch.attention, (
            f"architecture {name!r}: attention_map_class {arch.attention_map_class!r} is none of its attention "
            f"classes; fpt/attention.py hooks it for attention maps")
        linear_layer_types(arch)  # its linear_classes import


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
