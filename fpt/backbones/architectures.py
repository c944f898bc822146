"""What each supported architecture's modules are, in one table.

FPT freezes parameters by *what they are* (attention, feed-forward, ...), and
this table is the only place that says so for each Hugging Face architecture.
Parameters are classified by visiting modules (class names and exact paths),
never by substrings of parameter names: a renamed module makes
`classify_parameters` fail loudly instead of silently changing what trains.

A row also says what fpt's own code runs for its architecture (its last block at the read-out rows,
its linear layer classes and LoRA's layout of them, the attention-map module) and the tiny random model
the tests build of it: adding an architecture is one row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from fpt.backbones import readout
from fpt.core.groups import FPT_GROUPS, GROUPS, TRAINABLE_GROUPS  # noqa: F401  (the group names, fpt/core/groups.py)


def _gelu_new() -> tuple[type, ...]:
    from transformers.activations import NewGELUActivation

    return (NewGELUActivation,)


def _bert_residuals() -> tuple[type, ...]:
    from transformers.models.bert.modeling_bert import BertOutput, BertSelfOutput

    return BertSelfOutput, BertOutput


def _bert_self_attention() -> tuple[type, ...]:
    from transformers.models.bert.modeling_bert import BertSelfAttention

    return (BertSelfAttention,)


def _mpnet_residuals() -> tuple[type, ...]:
    from transformers.models.mpnet.modeling_mpnet import MPNetOutput

    return (MPNetOutput,)


@dataclass(frozen=True)
class Architecture:
    """How one Hugging Face `model_type` maps onto FPT's parameter groups."""

    model_type: str
    attention: tuple[str, ...]  # module class names whose parameters are attention
    feedforward: tuple[str, ...]  # module class names whose parameters are feed-forward
    positions: tuple[str, ...]  # submodule paths of learned positional embeddings
    unused: tuple[str, ...]  # submodule paths FPT never reads (token embeddings, ...)
    layers: str  # path of the ModuleList of residual blocks
    dropout_keys: tuple[str, ...]  # config keys set from `--dropout`
    norm_classes: tuple[str, ...] = ("LayerNorm",)  # class names of normalisation layers
    extra_forward_kwargs: tuple[str, ...] = field(default=())  # e.g. token_type_ids
    causal: bool = False
    attention_paths: tuple[str, ...] = ()  # submodule paths that are attention but not attention classes
    position_offset: int = 0  # first position id (MPNet/RoBERTa start after the padding row)
    # NOTE: rotary models (Gemma) have no learned positions, and ViT's 197 image positions fit no task;
    # with `add_positions` the FPT body owns a new learned table (the "positions" group), added to
    # the inputs. `add_positions_why` says why in `fpt describe`.
    add_positions: bool = False
    add_positions_why: str = ""
    attn_implementation: str | None = None  # forced where the model has no sdpa path (MPNet)
    drop_pooler: bool = False  # build without the pooler FPT never reads (`add_pooling_layer=False`)
    # NOTE: ViT's forward reads only pixel_values (patch embedding, CLS token, its own positions) and has
    # no `inputs_embeds`. With `final_norm` set, the FPT body skips that forward: it runs the blocks
    # under `layers`, then the norm at `final_norm`, on the embeddings FPT provides.
    final_norm: str | None = None
    # the model's eager attention is transformers' plain `eager_attention_forward` (causal through its
    # mask where `causal`), so fpt's CPU attention (fpt/fastops: the same math, fewer passes,
    # cheaper dropout, the fused kernel at long lengths) may stand in for it
    standard_eager: bool = False
    norm_position: str = "post-LN"  # where each block's norms sit: post-LN (BERT, MPNet) or pre-LN (GPT-2, ...)
    # -- what fpt's own code runs for it (fpt/backbones/readout.py, fpt/models/lora.py, fpt/models/model.py, fpt/paper/attention.py) and the
    # tiny random model the tests build of it (tests/conftest.py) --
    row_block: readout.RowBlock | None = None  # its last block at the read-out rows only; None: in full
    linear_classes: tuple[str, ...] = ()  # import paths of its linear layers that are not nn.Linear
    fan_in_fan_out: bool = False  # those store their weight (in, out), as peft's LoRA must be told
    attention_map_class: str = ""  # the attention class whose output holds its weights (fpt/paper/attention.py)
    # a tiny random model's config overrides; initializer_range 0.1 (not 0.02): a model this small needs larger
    # random weights for its frozen attention to single out positions at all
    tiny_config: dict = field(default_factory=dict, hash=False)
    # --- fpt's fused forwards (fpt/fastops): each returns the transformers classes whose modules get one,
    # imported when called (importing fpt stays light); None: none in this architecture.
    # modules whose forward is exactly LayerNorm(dropout(dense(hidden)) + input) (transformers 5.23):
    # dropout and the residual add in one pass (fastops.use_fused_residual, under fpt_cpu)
    fused_residual: Callable[[], tuple[type, ...]] | None = None
    # modules whose forward is exactly query, key and value linear layers on the hidden state, then the
    # attention interface (transformers 5.23): q, k, v as one matmul (fastops.use_projected_attention, fpt_cpu)
    projected_attention: Callable[[], tuple[type, ...]] | None = None
    # GELU modules computed as torch's one tanh-GELU kernel (fastops.use_fused_gelu; every path but `eager`):
    # transformers' gelu_new, which any of these architectures' configs may name
    tanh_gelu: Callable[[], tuple[type, ...]] | None = _gelu_new


ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture(
            model_type="gpt2",
            norm_position="pre-LN",
            attention=("GPT2Attention",),
            feedforward=("GPT2MLP",),
            positions=("wpe",),
            unused=("wte",),
            layers="h",
            dropout_keys=("resid_pdrop", "embd_pdrop", "attn_pdrop"),
            causal=True,
            # NOTE: GPT-2's `reorder_and_upcast_attn` variant runs only under the name "eager"; fpt's
            # CPU attention is its plain path
            standard_eager=True,
            row_block=readout.GPT2_ROWS,
            linear_classes=("transformers.pytorch_utils.Conv1D",),
            fan_in_fan_out=True,
            attention_map_class="GPT2Attention",
            tiny_config=dict(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=100, initializer_range=0.1,
                             bos_token_id=0, eos_token_id=0),
        ),
        Architecture(
            model_type="bert",
            # BertSelfOutput holds the attention output projection (and a LayerNorm,
            # which the norm rule claims first because it is the deeper module).
            attention=("BertSelfAttention", "BertSdpaSelfAttention", "BertSelfOutput"),
            feedforward=("BertIntermediate", "BertOutput"),
            positions=("embeddings.position_embeddings",),
            unused=("embeddings.word_embeddings", "embeddings.token_type_embeddings", "pooler"),
            layers="encoder.layer",
            dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob"),
            extra_forward_kwargs=("token_type_ids",),
            drop_pooler=True,
            standard_eager=True,
            row_block=readout.BERT_ROWS,
            attention_map_class="BertSelfAttention",
            tiny_config=dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128,
                             max_position_embeddings=64, vocab_size=100, initializer_range=0.1),
            fused_residual=_bert_residuals,
            projected_attention=_bert_self_attention,
        ),
        Architecture(
            model_type="mpnet",
            # MPNetAttention holds the output projection `o` inside MPNetSelfAttention (and a LayerNorm,
            # which the norm rule claims). The relative position bias (32 buckets x heads), shared by every
            # layer, only enters the attention scores, so it counts as attention.
            attention=("MPNetAttention", "MPNetSelfAttention"),
            feedforward=("MPNetIntermediate", "MPNetOutput"),
            positions=("embeddings.position_embeddings",),
            unused=("embeddings.word_embeddings", "pooler"),
            layers="encoder.layer",
            dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob"),
            attention_paths=("encoder.relative_attention_bias",),
            position_offset=2,  # padding_idx 1; real positions start at row 2
            attn_implementation="eager",
            drop_pooler=True,
            row_block=readout.MPNET_ROWS,
            attention_map_class="MPNetAttention",
            tiny_config=dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128,
                             max_position_embeddings=66, vocab_size=100, initializer_range=0.1),
            fused_residual=_mpnet_residuals,
        ),
        Architecture(
            model_type="gemma3_text",
            norm_position="pre-LN",
            # Every norm is a Gemma3RMSNorm (a scale only), including q_norm / k_norm inside attention.
            attention=("Gemma3Attention",),
            feedforward=("Gemma3MLP",),
            positions=(),
            unused=("embed_tokens",),
            layers="layers",
            dropout_keys=("attention_dropout",),
            norm_classes=("Gemma3RMSNorm",),
            causal=True,
            add_positions=True,
            add_positions_why="uses rotary positions and has no learned table",
            # plain eager attention plus grouped key/value heads and an optional score cap, both of which
            # fpt's CPU attention applies; sliding windows come in its mask
            standard_eager=True,
            row_block=readout.GEMMA3_ROWS,
            attention_map_class="Gemma3Attention",
            tiny_config=dict(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                             hidden_size=64, intermediate_size=128, max_position_embeddings=256, vocab_size=100,
                             sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                             initializer_range=0.1),
        ),
        Architecture(
            model_type="vit",
            norm_position="pre-LN",
            # transformers 5.x ViT (old hub checkpoints are renamed on load): each block is
            # layernorm_before -> attention (q/k/v/o_proj) -> layernorm_after -> mlp (fc1, GELU, fc2),
            # pre-LN like timm's vit_base_patch16_224; a final `layernorm` after the last block.
            attention=("ViTAttention",),
            feedforward=("ViTMLP",),
            positions=(),
            # the patch embedding (a conv), the CLS token and ViT's own 197 x D position table:
            # FPT's input layer and new position table replace them all
            unused=("embeddings", "pooler"),
            layers="layers",
            dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob"),
            add_positions=True,
            add_positions_why=("has learned positions only for its 197 image tokens (CLS + 14 x 14 patches), "
                               "which FPT does not use"),
            drop_pooler=True,
            final_norm="layernorm",
            standard_eager=True,
            row_block=readout.VIT_ROWS,
            attention_map_class="ViTAttention",
            # 2 x 2 patches of a 32 x 32 image: ViT's own 5-row position table, which FPT does not use
            tiny_config=dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128,
                             image_size=32, patch_size=16, initializer_range=0.1),
        ),
    )
}


def architecture_for(model_type: str) -> Architecture:
    from fpt.core.errors import FPTError

    if model_type not in ARCHITECTURES:
        raise FPTError(
            f"architecture {model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def fused_classes(field) -> tuple[type, ...]:
    """The classes one of a row's fused-forward fields (`fused_residual`, ...) names; none where it is None."""
    return () if field is None else field()


def linear_layer_types(arch: Architecture | None) -> tuple[type, ...]:
    """nn.Linear and the architecture's other linear layer classes (imported here: transformers loads lazily)."""
    import importlib

    extra = []
    for path in arch.linear_classes if arch is not None else ():
        module, _, name = path.rpartition(".")
        extra.append(getattr(importlib.import_module(module), name))
    return (nn.Linear, *extra)


def classify_body(model: nn.Module, arch: Architecture) -> dict[str, str]:
    """Map every parameter name of a backbone body to its group.

    Each parameter takes the group of its deepest classified ancestor module,
    so a LayerNorm inside an attention block is `layernorm`, not `attention`.
    """
    from fpt.core.errors import FPTError

    module_group: dict[str, str] = {}
    for path in arch.positions:
        model.get_submodule(path)  # raises if the table is stale for this model
        module_group[path] = "positions"
    for path in arch.unused:
        try:
            model.get_submodule(path)
        except AttributeError:
            continue  # optional parts (a pooler that was not built)
        module_group[path] = "unused"
    for path in arch.attention_paths:
        model.get_submodule(path)
        module_group[path] = "attention"
    for name, module in model.named_modules():
        cls = type(module).__name__
        if cls in arch.norm_classes or isinstance(module, nn.LayerNorm):
            module_group[name] = "layernorm"
        elif cls in arch.attention:
            module_group.setdefault(name, "attention")
        elif cls in arch.feedforward:
            module_group.setdefault(name, "feedforward")

    groups: dict[str, str] = {}
    for pname, _ in model.named_parameters():
        parts = pname.split(".")[:-1]
        group = None
        for depth in range(len(parts), -1, -1):  # deepest ancestor first
            group = module_group.get(".".join(parts[:depth]))
            if group is not None:
                break
        if group is None:
            raise FPTError(f"parameter {pname!r} of a {arch.model_type} model has no FPT group; "
                           f"update fpt/backbones/architectures.py")
        groups[pname] = group
    return groups
