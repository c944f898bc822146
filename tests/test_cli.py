"""The command line: bad input gives one clear line and a non-zero exit."""
import json
import re
import subprocess
import sys

import pytest

from fpt.cli import main


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
                 "--last-block-at-readout", "false"]) == 0
    assert "last block: in full\n" in capsys.readouterr().out


def test_describe_says_where_the_last_block_runs(tiny_backbones, capsys):
    assert main(["describe", "--backbone", tiny_backbones["bert"], "--task", "bit-xor"]) == 0
    assert "last block: at the 5 read-out token(s) only" in capsys.readouterr().out
    assert main(["describe", "--backbone", tiny_backbones["bert"], "--task", "bit-xor",
                 "--last-block-at-readout", "false"]) == 0
    assert "last block: in full\n" in capsys.readouterr().out
