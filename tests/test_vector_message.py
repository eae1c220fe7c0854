"""gfmkit.models.vector_message: its hand-written backward against autograd's, to second order."""

from __future__ import annotations

import pytest
import torch

from gfmkit.models.vector_message import vector_message


def inputs(with_x: bool, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    n_atoms, n_edges, width = 5, 14, 4

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)

    i = torch.randint(0, n_atoms, (n_edges,), generator=generator)
    j = torch.randint(0, n_atoms, (n_edges,), generator=generator)
    v, dvs, unit = rand(n_atoms, 3, width), rand(n_edges, width), rand(n_edges, 3)
    x, w = (rand(n_atoms, 3, width), rand(n_edges, width)) if with_x else (None, None)
    return v, dvs, unit, x, w, i, j


def reference(v, dvs, unit, x, w, i, j):
    message = dvs[:, None, :] * unit[:, :, None]
    if x is not None:
        message = message + w[:, None, :] * x.index_select(0, j)
    return v.index_add(0, i, message)


def fused(v, dvs, unit, x, w, i, j):
    wide = unit[:, :, None].expand(-1, -1, dvs.shape[1]).contiguous()
    return vector_message(v, dvs, unit, wide, x, w, i, j)


@pytest.mark.parametrize("with_x", [True, False])
def test_gradients_match_autograd_to_second_order(with_x):
    v, dvs, unit, x, w, i, j = inputs(with_x)
    differentiable = [t for t in (v, dvs, unit, x, w) if t is not None]
    torch.testing.assert_close(fused(v, dvs, unit, x, w, i, j), reference(v, dvs, unit, x, w, i, j), rtol=1e-14, atol=1e-14)
    torch.manual_seed(1)
    weight = torch.randn_like(reference(v, dvs, unit, x, w, i, j))
    grads = {}
    for name, fn in (("fused", fused), ("reference", reference)):
        # first order (inference: no graph), and the double backward of force training
        first = torch.autograd.grad((fn(v, dvs, unit, x, w, i, j) * weight).sum(), differentiable)
        kept = torch.autograd.grad((fn(v, dvs, unit, x, w, i, j) * weight).sum(), differentiable, create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in kept), differentiable, allow_unused=True)
        grads[name] = (first, kept, second)
    for a, b in zip(*(sum(grads[k], ()) for k in ("fused", "reference"))):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_x", [True, False])
def test_gradcheck(with_x):
    v, dvs, unit, x, w, i, j = inputs(with_x, seed=3)
    args = [t for t in (v, dvs, unit, x, w) if t is not None]

    def fn(*tensors):
        it = iter(tensors)
        v_, dvs_, unit_ = next(it), next(it), next(it)
        x_, w_ = (next(it), next(it)) if with_x else (None, None)
        return fused(v_, dvs_, unit_, x_, w_, i, j)

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_first_order_backward_keeps_float32_under_autocast():
    # autocast would run the batched mat-vec of the unit-vector gradient in bfloat16
    v, dvs, unit, x, w, i, j = (t.float() if t is not None and t.is_floating_point() else t for t in inputs(True, seed=5))
    args = [t.detach().requires_grad_() for t in (v, dvs, unit, x, w)]

    def unit_gradient():
        return torch.autograd.grad(fused(*args[:3], args[3], args[4], i, j).square().sum(), args[2])[0]

    plain = unit_gradient()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = unit_gradient()
    torch.testing.assert_close(mixed, plain, rtol=1e-6, atol=1e-6)
