"""The command line: bad input gives one clear line and a non-zero exit."""
import dataclasses
import json
import re
import subprocess
import sys

import pytest

from fpt.cli import build_parser, main
from fpt.commands.train import _worker_argv, config_from_args
from fpt.core.config import TrainConfig


def _fails(argv, capsys, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("fpt: error:"), err
    assert match in err, err


@pytest.mark.parametrize("argv,match", [
    (["train", "--task", "nope"], "unknown task 'nope'"),
    (["train", "--backbone", "gpt3"], "unknown backbone 'gpt3'"),
    (["train", "--task", "bit-xor", "--patch-size", "2"], "patch size 2 does not divide"),
    (["train", "--steps", "abc"], "expects int"),
    (["train", "--train", "input,wings"], "unknown parameter group 'wings'"),
    (["train", "--init", "magic"], "unknown init 'magic'"),
    (["train", "--precision", "fp64"], "unknown precision 'fp64'"),
    (["train", "--lr-schedule", "step"], "unknown lr_schedule 'step'"),
    (["train", "--config", "/no/such.yaml"], "does not exist"),
    (["describe", "--backbone", "/no/such/folder/"], "does not exist"),
])
def test_bad_input_one_line(argv, match, capsys, tmp_path):
    _fails(argv + ["--run-dir", str(tmp_path / "r")], capsys, match)
    assert not (tmp_path / "r").exists()


def test_resume_without_checkpoint(capsys, tmp_path):
    _fails(["train", "--resume", "--run-dir", str(tmp_path / "r")], capsys, "no checkpoint")


def test_unknown_config_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: bit-xor\nlearning_rate: 0.1\n")
    _fails(["train", "--config", str(cfg)], capsys, "unknown config key(s) learning_rate")


def test_missing_gpt2_weights_offline(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _fails(["train", "--backbone", "gpt2", "--run-dir", str(tmp_path / "r")], capsys, "--backbone minilm")


def test_yaml_then_flags(tiny_backbones, tmp_path):
    """Flags override the file; the last stdout line is the result JSON; the config is saved."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: bit-xor\nbackbone: {tiny_backbones['bert']}\nsteps: 100\nbatch_size: 4\n")
    out = subprocess.run([sys.executable, "-m", "fpt", "train", "-c", str(cfg), "--steps", "2",
                          "--eval-every", "1", "--run-dir", str(tmp_path / "r")],
                         check=True, capture_output=True, text=True).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["steps"] == 2
    assert "steps: 2" in (tmp_path / "r" / "config.yaml").read_text()


def test_describe_gpt2_random(capsys):
    assert main(["describe", "--backbone", "gpt2", "--task", "bit-xor", "--init", "random"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^layernorm +38,400 +38,400$", out, re.M)
    assert "attention" in out and "feedforward" in out
    assert "last block: at the 5 read-out token(s) only" in out  # Bit XOR reads 5 tokens


def test_describe_says_when_the_last_block_runs_in_full(tiny_backbones, capsys):
    assert main(["describe", "--backbone", tiny_backbones["bert"], "--task", "bit-xor",
                 "--no-last-block-at-readout"]) == 0
    assert "last block: in full\n" in capsys.readouterr().out


def test_describe_says_where_the_last_block_runs(tiny_backbones, capsys):
    assert main(["describe", "--backbone", tiny_backbones["bert"], "--task", "bit-xor"]) == 0
    assert "last block: at the 5 read-out token(s) only" in capsys.readouterr().out
    assert main(["describe", "--backbone", tiny_backbones["bert"], "--task", "bit-xor",
                 "--no-last-block-at-readout"]) == 0
    assert "last block: in full\n" in capsys.readouterr().out


def test_every_config_field_has_help():
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("help")]
    assert not missing, f"TrainConfig fields without metadata help: {missing}"


def _help_lines(capsys, monkeypatch, *argv) -> dict[str, str]:
    """`fpt ... --help` as flag -> its entry, the flags and their help on one line (a wide terminal)."""
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    entries = re.split(r"\n(?=  -)", capsys.readouterr().out)  # a long flag's help starts on the next line
    return {m.group(1): " ".join(entry.split()) for entry in entries if (m := re.match(r"  (--[\w-]+)", entry))}


def test_train_help_explains_every_flag(capsys, monkeypatch):
    from fpt.backbones import BACKBONES
    from fpt.tasks import TASKS

    lines = _help_lines(capsys, monkeypatch, "train")
    for f in dataclasses.fields(TrainConfig):
        line = lines["--" + f.name.replace("_", "-")]
        assert f.metadata["help"].split(";")[0] in line, line
        assert "type " not in line and "None" not in line, line
    assert "choices: auto, fp32, bf16 (default: auto)" in lines["--precision"]
    assert "choices: pretrained, random, stats" in lines["--init"]
    assert "choices: constant, cosine, linear" in lines["--lr-schedule"]
    assert "choices: auto, sdpa, eager" in lines["--attn-implementation"]
    assert f"registered: {', '.join(TASKS.names())} (default: bit-xor)" in lines["--task"]
    assert f"registered: {', '.join(BACKBONES.names())} (default: minilm)" in lines["--backbone"]
    assert "FILE.yaml" in lines["--task"] and "folder" in lines["--backbone"]
    assert "lora" in lines["--train"] and "(default" not in lines["--train"]
    assert lines["--compile"].startswith("--compile, --no-compile ") and "(default: off)" in lines["--compile"]


def test_describe_and_bench_share_the_config_flags(capsys, monkeypatch):
    for command in ("describe", "bench"):
        assert "choices: auto, fp32, bf16" in _help_lines(capsys, monkeypatch, command)["--precision"]


def test_booleans_are_switches_and_unset_keeps_the_yaml_value(tmp_path):
    parse = build_parser().parse_args
    assert parse(["train"]).compile is None  # not given: the YAML file's value or the default stays
    assert parse(["train", "--compile"]).compile is True
    assert parse(["train", "--no-compile"]).compile is False
    with pytest.raises(SystemExit):
        parse(["train", "--compile", "true"])  # no value: a switch
    cfg = tmp_path / "c.yaml"
    cfg.write_text("compile: true\nlast_block_at_readout: false\n")
    from_yaml = config_from_args(parse(["train", "-c", str(cfg)]))
    assert from_yaml.compile is True and from_yaml.last_block_at_readout is False
    flags = config_from_args(parse(["train", "-c", str(cfg), "--no-compile", "--last-block-at-readout"]))
    assert flags.compile is False and flags.last_block_at_readout is True


def test_worker_argv_rebuilds_switches():
    """torchrun workers parse the rebuilt command line to the same values, without --nproc."""
    args = build_parser().parse_args(["train", "--nproc", "2", "--quiet", "--compile", "--no-cache-features",
                                      "--no-last-block-at-readout", "--steps", "3", "--train", "input,output"])
    argv = _worker_argv(args)
    assert "--nproc" not in argv and "--compile" in argv and "--no-last-block-at-readout" in argv
    assert "--no-cache-features" in argv and "true" not in argv and "False" not in argv
    again = build_parser().parse_args(argv)
    for f in dataclasses.fields(TrainConfig):
        assert getattr(again, f.name) == getattr(args, f.name), f.name
    assert again.quiet and again.nproc is None


def test_tasks_list(capsys):
    from fpt.tasks import TASKS

    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("TASK ")
    for name in TASKS.names():
        assert re.search(rf"^{re.escape(name)} ", out, re.M), name
    assert re.search(r"^mnist +vectors of 16 +64 +10 +mnist/$", out, re.M)
    assert re.search(r"^cifar10 +vectors of 48 +64 +10 +cifar10/cifar-10-batches-py/$", out, re.M)
    assert re.search(r"^listops +ids, vocab \d+ +<= 1999 +10 +listops/$", out, re.M)
    assert re.search(r"^homology +ids, vocab 26 +<= 1024 +1195 +remote_homology/$", out, re.M)
    assert re.search(r"^bit-xor +vectors of 1 +10 +2 x 5 targets +\(generated\)$", out, re.M)
    assert "options: {n_bits: 5, patch_size: 1, eval_examples: 1000}" in out  # as --task-options takes them
    assert "--task FILE.yaml" in out
