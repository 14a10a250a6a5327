"""attention() as a torch.autograd.Function (imported by ringattn.attention_autograd)."""
import torch

from . import attention, attention_backward


class AttentionFunction(torch.autograd.Function):
    """o = attention(q, k, v, **options); the backward is the kernel's
    (attention_backward), with dq, dk, dv cast back to the inputs' dtypes."""

    @staticmethod
    def forward(ctx, q, k, v, options):
        q, k, v = (x.detach() for x in (q, k, v))
        o, lse = attention(q, k, v, **options)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.options = options
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(q, k, v, o, lse, do, **ctx.options)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None
