"""The registries are complete: every entry carries what the code elsewhere asks it for.

Tests parametrised over TASKS and over ARCHITECTURES (the tiny checkpoints of conftest.py, built from each
row's `tiny_config`) pick up a new entry by themselves; these checks make sure a new entry cannot skip the
parts they rely on.
"""
import csv
import json

from fpt.backbones import BACKBONES
from fpt.backbones.architectures import ARCHITECTURES, linear_layer_types
from fpt.commands.backbones import installable
from fpt.commands.data import preparable
from fpt.paper.report import REFERENCE
from fpt.tasks import TASKS


def test_every_architecture_has_a_tiny_test_config_and_an_attention_map_class():
    for name, arch in ARCHITECTURES.items():
        assert arch.tiny_config, (f"architecture {name!r} has no tiny_config (fpt/backbones/architectures.py): "
                                  f"tests/conftest.py builds a tiny random model of every row from it")
        assert arch.attention_map_class in arch.attention, (
            f"architecture {name!r}: attention_map_class {arch.attention_map_class!r} is none of its attention "
            f"classes; fpt/paper/attention.py hooks it for attention maps")
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


def test_a_new_task_is_one_file_and_one_registry_line(tmp_path, tiny_backbones, monkeypatch):
    """A task class that brings its own budget cell runs through `fpt reproduce` and `fpt report` with no
    other file touched: no budget, command or report table names it."""
    import torch

    from fpt.paper.budgets import TaskBudget
    from fpt.cli import main
    from fpt.tasks import Batch, Task, TaskData, TaskSpec

    class ParityData(TaskData):
        draws_train = True

        def __init__(self, spec, seed):
            self.spec = spec
            g = torch.Generator().manual_seed(seed)
            super().__init__(spec, {"train": self._draw(8, g), "val": self._draw(64, g), "test": self._draw(64, g)})

        @staticmethod
        def _draw(n, g):
            x = torch.randint(0, 2, (n, 4, 1), generator=g).float() * 2 - 1  # (N, 4 tokens, 1)
            return Batch(x, ((x > 0).sum(dim=(1, 2)) % 2).view(n, 1))

        def train_batch(self, batch_size, generator):
            return self._draw(batch_size, generator)

    class Parity(Task):
        budgets = {"smoke": TaskBudget(steps=6, eval_every=3, batch_size=8, target_accuracy=0.9)}

        def __init__(self, **options):
            super().__init__(**options)
            self.spec = TaskSpec(name="parity", input_kind="continuous", token_dim=1, seq_len=4, num_classes=2)

        def load(self, *, seed, data_dir=None):
            return ParityData(self.spec, seed)

    monkeypatch.setitem(TASKS._items, "parity", Parity)  # the one registry line: @TASKS.register("parity")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(f"name: m\ntasks: [parity]\ndefaults: {{backbone: {tiny_backbones['gpt2']}}}\n"
                      f"rows:\n  - {{name: FPT, config: {{}}}}\n")
    out = tmp_path / "out"
    assert main(["reproduce", str(matrix), "--budget", "smoke", "--out", str(out), "--quiet"]) == 0
    result = json.loads(next(out.glob("runs/fpt/parity/*/result.json")).read_text())
    assert result["steps"] == 6 and result["config"]["batch_size"] == 8  # the task's own budget cell
    assert "parity" in (out / "table.md").read_text()


def test_every_model_row_names_its_default_groups():
    """Each MODELS entry (fpt/core/rows.py) names its default groups and a builder that exists in fpt/models/."""
    import importlib

    from fpt.core.groups import TRAINABLE_GROUPS
    from fpt.core.rows import MODELS

    for name, row in MODELS.items():
        assert row.default_train and set(row.default_train) <= set(TRAINABLE_GROUPS), name
        module, _, function = row.builder.partition(":")
        assert module.startswith("fpt.models.") and callable(getattr(importlib.import_module(module), function)), name


def test_config_sits_at_the_bottom_of_the_import_graph():
    """fpt/core/config.py validates a config without importing the modules that build models (or torch)."""
    import subprocess
    import sys

    code = "import sys, fpt.core.config; print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('fpt', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert set(out) <= {"fpt", "fpt.core", "fpt.core.config", "fpt.core.errors", "fpt.core.groups", "fpt.core.registry", "fpt.core.rows"}, out
