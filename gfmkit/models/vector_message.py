"""PaiNN's vector message with a hand-written backward that forms fewer edge-sized tensors.

Per edge e = (j -> i): ``m_e = dvs_e (x) u_e + w_e * x_j`` (E, 3, F), summed into the receiving atom:
``v_i + sum_e m_e``. Autograd's own backward of these products forms six (E, 3, F) tensors per layer
(among them ``x_j * 1`` from addcmul's formula and a full-size gradient of the widened unit vectors);
:class:`VectorMessage` forms three: the receiving atoms' gradient gathered to the edges, ``x_j``
gathered again (not kept from the forward, so that the double backward sees its dependence on
``x``), and the gradient of ``x_j``; the reductions to (E, F) and (E, 3) read them in place.
The backward is made of differentiable operations, so force training's double backward goes through.
"""

from __future__ import annotations

import torch


def _dot_over_vector_axis(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_k a[:, k, :] * b[:, k, :] for (E, 3, F) tensors, without a (E, 3, F) temporary."""
    if torch.is_grad_enabled():  # double backward: slices' backward would zero-fill (E, 3, F) tensors
        return (a * b).sum(1)
    return (a[:, 0] * b[:, 0]).addcmul_(a[:, 1], b[:, 1]).addcmul_(a[:, 2], b[:, 2])


class VectorMessage(torch.autograd.Function):
    """``v.index_add(0, i, dvs[:, None] * unit_wide + w[:, None] * x.index_select(0, j))``.

    ``unit_wide`` is ``unit`` (E, 3) widened to (E, 3, F), computed once per forward by the caller
    and passed in so that all layers share it; gradients go to ``unit``. ``x`` and ``w`` may be None
    (the first layer, where vector features are still zero).
    """

    @staticmethod
    def forward(ctx, v, dvs, unit, unit_wide, x, w, i, j):
        message = dvs[:, None, :] * unit_wide
        if x is not None:
            message.addcmul_(x.index_select(0, j), w[:, None, :])
        ctx.save_for_backward(dvs, unit_wide, x, w, i, j)
        return v.index_add(0, i, message)

    @staticmethod
    def backward(ctx, grad):
        dvs, unit_wide, x, w, i, j = ctx.saved_tensors
        grad_v = grad if ctx.needs_input_grad[0] else None
        edge_grad = grad.index_select(0, i)  # (E, 3, F)
        grad_dvs = _dot_over_vector_axis(edge_grad, unit_wide) if ctx.needs_input_grad[1] else None
        grad_unit = None
        if ctx.needs_input_grad[2]:  # batched mat-vec, unless its slow double backward would follow
            if torch.is_grad_enabled():
                grad_unit = (edge_grad * dvs[:, None, :]).sum(2)
            else:  # outside autocast: it would run this product in bfloat16 (autograd's own stays fp32)
                with torch.autocast(edge_grad.device.type, enabled=False):
                    grad_unit = torch.bmm(edge_grad, dvs[:, :, None]).squeeze(2)
        grad_x = grad_w = None
        if x is not None:
            if ctx.needs_input_grad[5]:
                grad_w = _dot_over_vector_axis(edge_grad, x.index_select(0, j))
            if ctx.needs_input_grad[4]:
                scaled = edge_grad * w[:, None, :] if torch.is_grad_enabled() else edge_grad.mul_(w[:, None, :])
                # zeros made from the gradient, not from x: under a batched backward (is_grads_batched,
                # vmap) they then carry the batch dimension, so the in-place sum is allowed
                grad_x = scaled.new_zeros(x.shape).index_add_(0, j, scaled)
        return grad_v, grad_dvs, grad_unit, None, grad_x, grad_w, None, None


def vector_message(v, dvs, unit, unit_wide, x, w, i, j) -> torch.Tensor:
    """See :class:`VectorMessage`."""
    return VectorMessage.apply(v, dvs, unit, unit_wide, x, w, i, j)
