"""The PaiNN encoder (Schütt, Unke, Gastegger, ICML 2021): scalar and vector features, message and
update blocks, a radial basis (Gaussian or sine/Bessel, gfmkit.models.radial) with a cosine or
polynomial cutoff.

Implementation notes (measured on CPU, see benchmarks/README.md): the per-edge work is memory-bound,
so the message block forms as few edge-sized tensors as it can. Filters come per layer and per term
(scalar, direction, v_j) from slices of one fused weight, with the cutoff folded into the matmul;
``phi_vv`` multiplies ``v`` per atom before the gather; the vector message has its own backward
(:mod:`gfmkit.models.vector_message`, half the edge-sized tensors); unit vectors are widened once, because a
product broadcasting along the innermost dimension does not vectorise. Gathers use ``index_select``
and scatters ``index_add`` (advanced-indexing backward is ~7x slower). Features flow in a *stream*
dtype (the edge vectors' dtype: float64 or float32), while linear layers run in the parameters'
dtype (bfloat16 under ``bf16-pure``, or autocast's), so scatter sums and the residual stream stay
>= float32."""

from __future__ import annotations

import torch
from torch import nn

from gfmkit.models.radial import cutoff_function, radial_basis
from gfmkit.models.vector_message import vector_message


def run_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``layer`` in its parameters' dtype and return the result in ``x``'s dtype."""
    weight = next(layer.parameters())
    out = layer(x if x.dtype == weight.dtype or torch.is_autocast_enabled() else x.to(weight.dtype))
    return out.to(x.dtype)


def mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class PaiNNEncoder(nn.Module):
    """Scalar features ``s`` (N, F) and vector features ``v`` (N, 3, F) of every atom."""

    def __init__(self, hidden: int = 128, layers: int = 3, n_rbf: int = 20, cutoff: float = 5.0, max_z: int = 100,
                 conditioning: bool = False, basis: str = "bessel", cutoff_fn: str = "cosine", message_gain: float = 1.0):
        super().__init__()
        self.hidden, self.layers, self.cutoff = hidden, layers, float(cutoff)
        self.message_gain = float(message_gain)
        self.embedding = nn.Embedding(max_z + 1, hidden)
        self.basis = radial_basis(basis, n_rbf, cutoff)
        self.cutoff_fn = cutoff_function(cutoff_fn)
        self.filters = nn.Linear(n_rbf, layers * 3 * hidden)
        self.message = nn.ModuleList(mlp(hidden, hidden, 3 * hidden) for _ in range(layers))
        # U and V of the update block in one matmul: (F -> 2F), split afterwards
        self.update_uv = nn.ModuleList(nn.Linear(hidden, 2 * hidden, bias=False) for _ in range(layers))
        self.update = nn.ModuleList(mlp(2 * hidden, hidden, 3 * hidden) for _ in range(layers))
        self.condition = mlp(2, hidden, hidden) if conditioning else None

    @torch.no_grad()
    def xavier_(self) -> None:
        """Xavier-uniform weights and zero biases in every linear layer (the embedding keeps its own)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    module.bias.zero_()

    @torch.no_grad()
    def divide_message_out_(self) -> None:
        """Divide each message MLP's last layer by ``message_gain``, after the draws: the forward multiplies
        its output back, so the fresh encoder computes what the draws do at gain 1."""
        if self.message_gain != 1.0:
            for block in self.message:
                block[2].weight.div_(self.message_gain)
                block[2].bias.div_(self.message_gain)

    def forward(
        self,
        z: torch.Tensor,
        vectors: torch.Tensor,
        edge_index: torch.Tensor,
        condition: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features from atomic numbers, edge vectors r_ij (E, 3) and ``edge_index`` = [j, i].

        ``condition`` (N, 2) holds each atom's structure charge and spin when conditioning is on.
        """
        stream = vectors.dtype
        F = self.hidden
        j, i = edge_index[0], edge_index[1]
        distance = torch.linalg.vector_norm(vectors, dim=1)
        unit = vectors / distance[:, None]
        # Every layer's filters come from one (layers * 3F, n_rbf) weight, read per layer: slicing the
        # small weight instead of the (E, layers * 3F) output keeps the backward free of full-size
        # concatenations. The cutoff multiplies after the filter's bias, so every message fades smoothly
        # to zero at the cutoff: (W b + c) fc = [b fc, fc] [W; c], a matmul with no extra product.
        fc = self.cutoff_fn(distance, self.cutoff)[:, None]
        basis = torch.cat([self.basis(distance) * fc, fc], dim=1)
        weight = torch.cat([self.filters.weight, self.filters.bias[:, None]], dim=1)
        if not torch.is_autocast_enabled():
            basis = basis.to(weight.dtype)
        # per layer: the filters of the scalar and direction terms (E, 2F) and of the v_j term (E, F)
        # (layer 0 has no v_j term: vector features start at zero)
        filters = []
        for layer, (w_s, w_vv, w_vs) in enumerate(w.split(F) for w in torch.split(weight, 3 * F)):
            filters.append((nn.functional.linear(basis, w_s).to(stream), nn.functional.linear(basis, w_vs).to(stream),
                            nn.functional.linear(basis, w_vv).to(stream) if layer > 0 else None))
        # the unit vectors widened once to (E, 3, F): a product broadcasting along the innermost
        # dimension does not vectorise (measured 5x slower than with a contiguous operand)
        unit_wide = unit[:, :, None].expand(-1, -1, F).contiguous()
        s = self.embedding(z).to(stream)
        if self.condition is not None:
            if condition is None:
                raise ValueError("this model is conditioned on charge and spin: pass them")
            s = s + run_linear(self.condition, condition.to(stream))
        v = torch.zeros(len(z), 3, F, dtype=stream, device=vectors.device)
        for layer in range(self.layers):
            # message: continuous filters on neighbour scalars, vectors rotated along the edge. The v_j
            # term phi_vv_j * W_vv * v_j multiplies phi_vv into v per atom, before the gather.
            phi = run_linear(self.message[layer], s)
            if self.message_gain != 1.0:
                phi = phi * self.message_gain
            phi_s, phi_vv, phi_vs = phi.split(F, dim=1)
            w_s, w_vs, w_vv = filters[layer]
            ds = phi_s.index_select(0, j) * w_s
            dvs = phi_vs.index_select(0, j) * w_vs
            # vector features start at zero: the first layer has no v_j term (gfmkit.models.vector_message
            # sums the direction and v_j terms into v with a backward that forms fewer edge-sized tensors)
            x = v * phi_vv[:, None, :] if layer > 0 else None
            s = s.index_add(0, i, ds)
            v = vector_message(v, dvs, unit, unit_wide, x, w_vv, i, j)
            # update: mix scalar and vector channels within each atom
            uv, vv = torch.split(run_linear(self.update_uv[layer], v), F, dim=2)
            norm = torch.sqrt(torch.sum(vv * vv, dim=1) + 1e-8)
            a = run_linear(self.update[layer], torch.cat([s, norm], dim=1))
            avv, asv, ass = torch.split(a, F, dim=1)
            v = v + avv[:, None, :] * uv
            s = s + asv * torch.sum(uv * vv, dim=1) + ass
        return s, v
