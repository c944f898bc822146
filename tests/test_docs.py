"""The commands the docs show work as written, so documented flags cannot rot.

Every line of a fenced ```bash``` block in README.md and docs/*.md that runs fpt (`fpt ...`, also after
`VAR=value` or as `torchrun ... -m fpt ...`) parses with fpt's own parser. Beyond parsing: a training
command (train, describe, bench) must make a valid config whose `--layers` fits its backbone; a sweep
(`fpt reproduce`) runs with `--dry-run` (its time estimate stubbed: the plan is what is checked); a
listing (`fpt tasks list`, `fpt backbones list`) runs. The flags of every row in the model-rows tables
(README.md, docs/rows.md) get the same config check. A line with a placeholder is skipped only where
SKIP names it, with the reason.
"""
import re
import shlex
from pathlib import Path

import pytest

from fpt.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ROW_TABLES = [ROOT / "README.md", ROOT / "docs" / "rows.md"]

# documented command (or row flags) -> why it is not checked beyond what is said
SKIP = {
    "fpt train --backbone gpt2 ...": "`...` stands for the rest of a command",
}
# documented command -> why only its flags are parsed: it reads a file that only the reader has
PARSE_ONLY = {
    "fpt train --config my.yaml --lr 3e-4": "my.yaml is the reader's config file",
}


def fenced_commands(path: Path) -> list[str]:
    """The fpt command lines of the file's ```bash blocks, continuation lines joined, comments cut."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # VAR=value before the command
                words = words[1:]
            if "-m" in words and words[words.index("-m") + 1:][:1] == ["fpt"]:  # torchrun ... -m fpt ...
                words = ["fpt", *words[words.index("-m") + 2:]]
            if words[:1] == ["fpt"]:
                commands.append(shlex.join(words))
    return commands


DOCUMENTED = [(path.relative_to(ROOT).as_posix(), cmd) for path in DOCS for cmd in fenced_commands(path)]


def row_flags(path: Path) -> list[str]:
    """The flags each row of the file's tables gives in its second column: the cell's first backticked
    span where it starts with a flag (or is an `fpt train` command); under a header that is itself a flag
    (`--train`), the span is that flag's value."""
    rows, header = [], None
    for line in path.read_text().splitlines():
        cells = line.split("|")
        if not line.startswith("|") or len(cells) < 4:
            header = None  # a table ended
            continue
        spans = re.findall(r"`([^`]*)`", cells[2])
        if header is None:  # the header row
            header = spans[0] if len(spans) == 1 and re.fullmatch(r"--[a-z-]+", spans[0]) else ""
            continue
        if set(cells[2].strip()) <= set("-:") or not spans:  # the |---| line, or no flags
            continue
        first = spans[0].removeprefix("fpt train ")
        if first.startswith("--"):
            rows.append(first)
        elif header:
            rows.append(f"{header} {first}")
    return rows


ROWS = [(path.relative_to(ROOT).as_posix(), flags) for path in ROW_TABLES for flags in row_flags(path)]


def test_the_docs_show_commands_and_rows():
    """The extraction finds what it should (an empty list would pass every test below)."""
    files = {f for f, _ in DOCUMENTED}
    assert {"README.md", "docs/rows.md", "docs/usage.md"} <= files and len(DOCUMENTED) > 30
    assert ("README.md", "fpt train --task bit-xor --steps 2000 --early-stop 1.0") in DOCUMENTED
    assert any(flags.startswith("--backbone gpt2 --init random --train all --layers") for _, flags in ROWS)
    assert "--train output,layernorm" in {flags for _, flags in ROWS}  # a `--train` column's value
    assert len(ROWS) > 15
    documented = {cmd for _, cmd in DOCUMENTED} | {flags for _, flags in ROWS}
    assert not (set(SKIP) | set(PARSE_ONLY)) - documented, "SKIP / PARSE_ONLY names a line no doc shows"


def _check_config(args) -> None:
    """A valid TrainConfig from the parsed flags, whose --layers fits its backbone."""
    from fpt.backbones import load_config
    from fpt.commands.train import config_from_args

    cfg = config_from_args(args)  # an unknown choice or a bad combination raises FPTError
    if cfg.layers is not None and cfg.model == "fpt":
        config, _, _ = load_config(cfg.backbone)  # offline for every registry name but an opt-in one
        assert cfg.layers <= config.num_hidden_layers, \
            f"--layers {cfg.layers}, but {cfg.backbone} has {config.num_hidden_layers} layers"


@pytest.mark.parametrize("doc,command", DOCUMENTED, ids=[f"{d}: {c}" for d, c in DOCUMENTED])
def test_documented_command_works(doc, command, monkeypatch, capsys):
    if command in SKIP:
        pytest.skip(SKIP[command])
    argv = shlex.split(command)[1:]
    parser = build_parser()
    if "--help" in argv or "-h" in argv:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 0
        return
    args = parser.parse_args(argv)  # a renamed flag or choice: SystemExit(2) here
    if command in PARSE_ONLY:
        return
    monkeypatch.chdir(ROOT)  # relative paths as a reader in the repository has them
    if args.command in ("train", "describe", "bench"):
        _check_config(args)
    elif args.command == "reproduce":
        import fpt.paper.reproduce

        def no_timing(runs):
            return [{"row": r.row.name, "task": r.task, "seed": r.seed, "lr": r.lr, "steps": r.config.steps,
                     "s_per_step": 0.0, "est_s": 0.0} for r in runs]

        monkeypatch.setattr(fpt.paper.reproduce, "estimate", no_timing)
        assert main([*argv, "--dry-run"] if "--dry-run" not in argv else argv) == 0, capsys.readouterr().err
        planned = re.search(r": (\d+) runs planned", capsys.readouterr().out)
        assert planned and int(planned.group(1)) > 0, f"plans no run: {command}"
    elif args.command == "report":
        assert (ROOT / args.out / "matrix.yaml").exists(), f"{args.out} holds no sweep"
    elif args.command in ("tasks", "backbones") and args.action == "list":
        assert main(argv) == 0 and capsys.readouterr().out


@pytest.mark.parametrize("doc,flags", ROWS, ids=[f"{d}: {f}" for d, f in ROWS])
def test_documented_row_flags_make_a_valid_config(doc, flags):
    if flags in SKIP:
        pytest.skip(SKIP[flags])
    _check_config(build_parser().parse_args(["train", *shlex.split(flags)]))


def test_pyproject_declares_ranges_that_requirements_pin_inside():
    """pyproject.toml: ranges (an environment of your own); requirements.txt: the exact versions that
    `make install` and CI install, each inside its range."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    assert all("==" not in str(r.specifier) for r in declared), "pyproject.toml pins an exact version"
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    for req in declared:
        name = canonicalize_name(req.name)
        if name in pins:
            assert req.specifier.contains(pins[name]), f"requirements.txt pins {name} {pins[name]}, outside {req}"
    for extra_package in ("torch", "transformers", "tensorboard", "ray", "pytest"):
        assert extra_package in pins, f"requirements.txt does not pin {extra_package}"
