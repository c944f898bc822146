"""One fused computation, two ways in: an autograd.Function for eager runs and opaque custom ops
(`fpt::NAME`, `fpt::NAME_backward`) for torch.compile, from one forward and one backward.

Why both: a custom op's dispatch is most of a small op's cost in eager (forward and backward of a 64-element
tensor took 170 us through the ops, 40 us for torch's own dropout); torch.compile needs the ops to trace
without a graph break.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def opaque_op(name: str, fn: Callable, fake: Callable, tags=()) -> torch.library.CustomOpDef:
    """`fn` (schema from its annotations) as custom op fpt::`name`, with `fake` for its output shapes."""
    op = torch.library.custom_op(f"fpt::{name}", fn, mutates_args=(), tags=tags)
    op.register_fake(fake)
    return op


@dataclass(frozen=True)
class FusedOp:
    eager: type[torch.autograd.Function]  # `.apply(*inputs)`, the seed an int
    op: torch.library.CustomOpDef  # the same inputs, the seed a 0-d int64 tensor (torch.compile)


def fused_op(name: str, forward: Callable, fake: Callable, *, saved: Callable, gradients: Callable,
             backward: Callable | None = None, backward_fake: Callable | None = None) -> FusedOp:
    """The eager autograd.Function and the custom op (with its autograd) of one computation.

    forward(*inputs) -> output(s): the computation; its annotations are the op's schema. The seed among the
        inputs is an int in eager runs and a 0-d tensor in the op: `forward` reads it with int().
    fake(*inputs): the op's outputs as empty tensors of their shapes and dtypes.
    saved(inputs, outputs) -> tuple: what the backward reads (tensors saved for backward, other values kept).
    backward(*args) -> gradient(s): the backward's opaque part, custom op fpt::`name`_backward (shapes from
        `backward_fake`); None: `forward` itself (dropout: the same mask on the gradient).
    gradients(backward, saved, *output_grads) -> one gradient or None per input: calls `backward` (the
        function in eager runs, its op under torch.compile) and does the traceable rest.
    """
    def save(ctx, inputs, output) -> None:  # named as torch.library calls setup_context
        values = saved(inputs, output)
        ctx.is_tensor = tuple(isinstance(v, torch.Tensor) for v in values)
        ctx.save_for_backward(*(v for v in values if isinstance(v, torch.Tensor)))
        ctx.values = tuple(v for v in values if not isinstance(v, torch.Tensor))

    def restore(ctx) -> tuple:
        tensors, values = iter(ctx.saved_tensors), iter(ctx.values)
        return tuple(next(tensors) if is_tensor else next(values) for is_tensor in ctx.is_tensor)

    def eager_forward(ctx, *inputs):
        ctx.set_materialize_grads(False)  # no zeros for outputs the backward does not read (the saved softmax)
        outputs = forward(*inputs)
        save(ctx, inputs, outputs)
        return outputs

    def eager_backward(ctx, *output_grads):
        return gradients(backward or forward, restore(ctx), *output_grads)

    eager = type("".join(word.title() for word in name.split("_")), (torch.autograd.Function,),
                 {"forward": staticmethod(eager_forward), "backward": staticmethod(eager_backward),
                  "__module__": __name__, "__doc__": f"fpt::{name} in eager runs, without a custom op's dispatch."})
    op = opaque_op(name, forward, fake)
    backward_op = op if backward is None else opaque_op(f"{name}_backward", backward, backward_fake)
    op.register_autograd(lambda ctx, *output_grads: gradients(backward_op, restore(ctx), *output_grads),
                         setup_context=save)
    return FusedOp(eager=eager, op=op)
