"""`fpt backbones list`: which backbones load here without a network, and how to get the others; nothing
is downloaded, unpacked or built to find out."""
import pytest

from fpt.cli import main


def _listed(capsys) -> dict[str, tuple[str, str]]:
    """name -> (yes | no, the line under it: where the weights are or how to get them)."""
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["backbone", "offline", "what"]
    rows = lines[1:]
    return {first.split()[0]: (first.split()[1], second.strip()) for first, second in zip(rows[::2], rows[1::2])}


def test_backbones_list_says_what_loads_offline(tiny_backbones, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FPT_CACHE", str(tmp_path / "fpt-cache"))
    hub = tmp_path / "hub"  # a Hugging Face cache holding gpt2-medium alone
    snapshot = hub / "models--gpt2-medium" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")
    (hub / "models--gpt2-medium" / "refs").mkdir()
    (hub / "models--gpt2-medium" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("FPT_GPT2_LARGE_PATH", tiny_backbones["gpt2"])  # a local folder named by the registry
    monkeypatch.setattr("fpt.commands.backbones._installed", lambda requirement: False)  # no opt-in packages

    assert main(["backbones", "list"]) == 0
    listed = _listed(capsys)
    assert listed["minilm"][0] == "yes" and listed["minilm"][1].startswith("weights: folder ")
    assert listed["gpt2-mini"] == ("yes", "weights: none exist (--init random, built from its config)")
    assert listed["gpt2-medium"] == ("yes", "weights: Hugging Face cache (gpt2-medium)")
    assert listed["gpt2-large"] == ("yes", f"weights: folder {tiny_backbones['gpt2']}")
    assert listed["gpt2"][0] == "no" and "(--init random works offline)" in listed["gpt2"][1]
    assert listed["mpnet"] == ("no", "to get it: fpt backbones install mpnet")
    assert listed["gemma3-270m"] == ("no", "to get it: fpt backbones install gemma3-270m")

    # installed and prepared: the cache folder is what loads
    ready = tmp_path / "fpt-cache" / "backbones" / "mpnet"
    ready.mkdir(parents=True)
    (ready / "config.json").write_text("{}")
    (ready / ".fpt-ready").write_text("ok\n")
    assert main(["backbones", "list"]) == 0
    assert _listed(capsys)["mpnet"] == ("yes", f"weights: prepared in {ready}")


@pytest.mark.parametrize("installed", [True, False])
def test_an_installed_but_unprepared_backbone_is_prepared_on_first_use(installed, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FPT_CACHE", str(tmp_path))
    monkeypatch.setattr("fpt.commands.backbones._installed", lambda requirement: installed)
    assert main(["backbones", "list"]) == 0
    state, how = _listed(capsys)["gemma3-270m"]
    assert (state == "yes") == installed
    assert how == (f"weights: installed; prepared on first use into {tmp_path / 'backbones' / 'gemma3-270m'}"
                   if installed else "to get it: fpt backbones install gemma3-270m")
