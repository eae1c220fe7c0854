"""MultiHeadPaiNN: a shared PaiNN encoder and one output head per dataset.

One forward returns each structure's own-head energy, conservative forces (-dE/dpos) and, for fully
periodic structures, the stress (1/V dE/d strain, eV/Å^3, ASE's sign). Edge vectors are formed inside
autograd from positions, cell and integer shifts, after a symmetric strain is applied to positions
and cell, so forces and stress come from one ``autograd.grad`` call. The encoder runs once however
many heads are read: ``energies=True`` also returns every head's energy (B, n_heads).
:meth:`MultiHeadPaiNN.predict` (:mod:`gfmkit.models.predict`) adds per-head and composition-weighted
forces and stress, head weights (a fitted gate, ``model.gate``, or training-free overlap weights) and
the heads' disagreement, from the same pass (:meth:`MultiHeadPaiNN.head_pass`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from gfmkit import keys
from gfmkit.models.config import HeadConfig, ModelConfig
from gfmkit.models.heads import StackedHeads
from gfmkit.models.painn import PaiNNEncoder


class MultiHeadPaiNN(nn.Module):
    """Shared PaiNN encoder + stacked per-dataset heads. Build with heads from data via
    :func:`gfmkit.models.build_model`, or directly from configs."""

    def __init__(self, config: ModelConfig, heads: Sequence[HeadConfig]):
        super().__init__()
        self.config = config
        self.heads = [HeadConfig(**asdict(h)) for h in heads]
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}")
        self.encoder = self._new_encoder()
        self.readout = StackedHeads(self.heads, config.hidden, config.head_hidden, config.max_z)
        for block in range(len(self.readout.sizes)):
            if len({h.adapted for h in self.heads if h.block == block}) > 1:
                raise ValueError(f"heads of block {block} must all be adapted or all not")
        self.direct = nn.Linear(config.hidden, len(self.heads), bias=False) if config.direct_forces else None
        if config.init == "xavier":  # after torch's defaults, so "torch" draws the same numbers as before
            self.encoder.xavier_()
            self.readout.xavier_()
            if self.direct is not None:
                nn.init.xavier_uniform_(self.direct.weight)
        self.encoder.divide_message_out_()  # after the draws: a fresh model is the same function for every gain
        if config.head_init_scale != 1.0:  # after the draws, so the other weights are those of scale 1
            self.readout.scale_last_(config.head_init_scale)
        self.load_head_statistics()

    @property
    def head_names(self) -> list[str]:
        return [h.name for h in self.heads]

    def head_index(self, name: str) -> int:
        try:
            return self.head_names.index(name)
        except ValueError:
            raise KeyError(f"model has no head {name!r}; heads: {self.head_names}") from None

    def calculator(self, head: str | None = None, **weighting: Any) -> Any:
        """An ASE calculator of this model's head ``head`` (energy, forces, stress); without ``head``, the
        model's only energy head (a model with several says which there are). ``head="weighted"``: the
        composition-weighted energy heads (``weighting`` keywords: ``weights`` and ``target`` of
        :meth:`predict`; ``calc.results`` also holds the head weights and every head's energy)."""
        from gfmkit.models.calculator import GFMCalculator, WeightedCalculator

        if head == "weighted":
            return WeightedCalculator(self, **weighting)
        if head is None:
            energy_heads = [h.name for h in self.heads if h.kind == "energy"]
            if len(energy_heads) != 1:
                raise ValueError(f"this model has {len(energy_heads)} energy heads; choose one: "
                                 f"model.calculator(head=...) with head in {energy_heads}")
            head = energy_heads[0]
        return GFMCalculator(self, head)

    @property
    def gate(self) -> nn.Module | None:
        """The fitted head gate (:class:`gfmkit.models.gate.HeadGate`), or None; set with :meth:`set_gate`."""
        return self._modules.get("gate")

    def set_gate(self, gate: nn.Module | None) -> None:
        """Attach (or with None remove) a head gate; it is saved in checkpoints with the weights."""
        if gate is not None and gate.n_heads != len(self.heads):
            raise ValueError(f"the gate weights {gate.n_heads} heads, the model has {len(self.heads)}")
        self._modules["gate"] = gate

    @property
    def adapters(self) -> nn.Module | None:
        """The encoder's LoRA adapters (:class:`gfmkit.models.adapters.EncoderAdapters`) serving the heads
        marked ``adapted``, or None; set with :meth:`set_adapters`."""
        return self._modules.get("adapters")

    def set_adapters(self, adapters: nn.Module | None) -> None:
        """Attach (or with None remove) LoRA adapters of this model's encoder; saved with the weights."""
        old = self.adapters
        if old is not None and old is not adapters:
            old.detach()
        self._modules["adapters"] = adapters

    def merge_adapters(self) -> None:
        """Fold the LoRA adapters into a copy of the encoder for inference (the adapted heads then cost
        one plain encoder pass); :meth:`unmerge_adapters` before training them further."""
        if self.adapters is None:
            raise ValueError("this model has no LoRA adapters to merge")
        self.adapters.merge(self.encoder, self._new_encoder())

    def unmerge_adapters(self) -> None:
        """Use the adapters' low-rank updates again (see :meth:`merge_adapters`)."""
        if self.adapters is not None:
            self.adapters.unmerge()

    def _new_encoder(self) -> PaiNNEncoder:
        """A freshly initialised encoder of this model's architecture."""
        c = self.config
        return PaiNNEncoder(c.hidden, c.layers, c.n_rbf, c.cutoff, c.max_z, c.conditioning, basis=c.radial_basis,
                            cutoff_fn=c.cutoff_fn, message_gain=c.message_gain)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``; a state with a head gate (``gate.*``) or LoRA adapters
        (``adapters.*``) builds them first."""
        if self.gate is None and any(k.startswith("gate.") for k in state_dict):
            from gfmkit.models.gate import HeadGate

            self.set_gate(HeadGate.from_state_dict(state_dict, prefix="gate."))
        if self.adapters is None and any(k.startswith("adapters.") for k in state_dict):
            from gfmkit.models.adapters import EncoderAdapters

            dtype = next(self.encoder.parameters()).dtype
            self.set_adapters(EncoderAdapters.from_state_dict(self.encoder, state_dict).to(dtype))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def predict(self, batch: Any, **options: Any) -> Any:
        """Every chosen head's energy from one encoder pass, per-head or weighted forces and stress, head
        weights and the heads' disagreement: see :func:`gfmkit.models.predict.predict`."""
        from gfmkit.models.predict import predict

        return predict(self, batch, **options)

    def load_head_statistics(self) -> None:
        """Copy each HeadConfig's references, scale and shift into the model's float64 buffers."""
        from ase.data import atomic_numbers

        with torch.no_grad():
            self.readout.reference.zero_()
            for k, head in enumerate(self.heads):
                for symbol, value in head.reference_energies.items():
                    self.readout.reference[k, atomic_numbers[symbol]] = float(value)
                self.readout.scale[k] = head.scale
                self.readout.shift[k] = head.shift

    def forward(
        self,
        batch: Any,
        *,
        forces: bool = True,
        stress: bool = False,
        energies: bool = False,
        training: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Predictions for a PyG batch (fields of :mod:`gfmkit.data.graphs`).

        Returns ``energy`` (B,) of each structure's own head (for property heads: the property),
        ``forces`` (N, 3) when ``forces``, ``stress`` (B, 3, 3) when ``stress`` (zeros for structures
        that are not fully periodic), ``energies`` (B, n_heads) when ``energies``. ``training`` keeps
        the graph so that a loss on forces/stress can be back-propagated.
        """
        conservative = forces and self.direct is None
        needed = None
        if self.adapters is not None and not energies:  # only the batch's own heads: skip a pass none reads
            needed = torch.unique(batch.dataset).tolist()
        state = self.head_pass(batch, positions=conservative, stress=stress, heads=needed)
        totals = state.totals
        own = totals.gather(1, batch.dataset[:, None]).squeeze(1)
        out = {keys.ENERGY: own}
        if energies:
            out["energies"] = totals

        if forces and self.direct is not None:
            direct = run_direct(self.direct, state.vector_features)  # (N, 3, n_heads)
            out[keys.FORCES] = direct.gather(2, batch.dataset.index_select(0, state.graph_of_atom)[:, None, None].expand(-1, 3, 1)).squeeze(2)
        wrt = state.inputs()
        if wrt:
            grads = torch.autograd.grad(own.sum(), wrt, create_graph=training, retain_graph=training)
            if conservative:
                out[keys.FORCES] = -grads[0]
            if state.strain is not None:
                out[keys.STRESS] = strain_to_stress(batch, grads[-1])
        return out if training else {k: t.detach() for k, t in out.items()}

    def head_pass(self, batch: Any, *, positions: bool, stress: bool, heads: Any = None) -> HeadPass:
        """One encoder pass over ``batch``: every head's total (B, n_heads), with positions (when
        ``positions``) and a symmetric strain (when ``stress``) as autograd inputs of the totals.
        :meth:`forward` and :func:`gfmkit.models.predict.predict` both start from it.

        A model with LoRA adapters runs a second, adapted pass for its ``adapted`` heads (the first pass,
        and so every other head, never sees the adapters). ``heads`` (indices), when given, are the only
        heads whose totals are needed: a pass no needed head reads is skipped (its heads' totals are 0)."""
        cell = batch.cell
        n_graphs = int(batch.natoms.numel())
        graph_of_atom = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros_like(batch.z)
        leaf = batch.pos.detach().requires_grad_(True) if (positions or stress) else batch.pos
        pos = leaf
        strain = None
        if stress:
            strain = torch.zeros(n_graphs, 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            pos = pos + torch.bmm(pos[:, None, :], symmetric.index_select(0, graph_of_atom)).squeeze(1)
            cell = cell + torch.bmm(cell, symmetric)
        j, i = batch.edge_index[0], batch.edge_index[1]
        graph_of_edge = graph_of_atom.index_select(0, i)
        offsets = torch.bmm(batch.edge_shift.to(pos.dtype)[:, None, :], cell.index_select(0, graph_of_edge)).squeeze(1)
        vectors = pos.index_select(0, j) - pos.index_select(0, i) + offsets

        condition = None
        if self.config.conditioning:
            condition = torch.stack([batch.charge, batch.spin], dim=1).index_select(0, graph_of_atom)
        features = self._block_features(batch, vectors, condition, heads)
        _, v = features[0] if features[0] is not None else next(f for f in features if f is not None)
        per_atom = self.readout.per_atom([f[0] if f is not None else None for f in features], batch.z)  # (N, n_heads)
        totals = torch.zeros(n_graphs, per_atom.shape[1], dtype=per_atom.dtype, device=per_atom.device)
        totals = totals.index_add(0, graph_of_atom, per_atom)
        totals = torch.where(self.readout.is_mean, totals / batch.natoms[:, None].to(totals.dtype), totals)
        return HeadPass(totals, graph_of_atom, leaf if positions else None, strain, v)

    def _block_features(self, batch: Any, vectors: torch.Tensor, condition: torch.Tensor | None,
                        heads: Any) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """(s, v) of the encoder pass each head block reads: the plain pass, or the adapted one for the
        blocks of ``adapted`` heads (when the model has adapters); None for a block no needed head is in."""
        sizes = self.readout.sizes
        starts = [sum(sizes[:b]) for b in range(len(sizes))]
        adapted = [self.heads[start].adapted and self.adapters is not None for start in starts]
        wanted = [True] * len(sizes)
        if heads is not None:
            chosen = {int(k) for k in heads}
            wanted = [any(start + j in chosen for j in range(size)) for start, size in zip(starts, sizes)]
        passes: dict[bool, tuple[torch.Tensor, torch.Tensor]] = {}
        for use_adapters in sorted({a for a, w in zip(adapted, wanted) if w}):
            passes[use_adapters] = self._encode(batch, vectors, condition, adapted=use_adapters)
        if not passes:  # nothing needed: the plain pass, for shapes
            passes[False] = self._encode(batch, vectors, condition, adapted=False)
        return [passes[a] if w else None for a, w in zip(adapted, wanted)]

    def _encode(self, batch: Any, vectors: torch.Tensor, condition: torch.Tensor | None, *,
                adapted: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not adapted:
            return self.encoder(batch.z, vectors, batch.edge_index, condition)
        if self.adapters.merged is not None:
            return self.adapters.merged(batch.z, vectors, batch.edge_index, condition)
        with self.adapters.active():
            return self.encoder(batch.z, vectors, batch.edge_index, condition)


def run_direct(layer: nn.Linear, v: torch.Tensor) -> torch.Tensor:
    weight = layer.weight
    x = v if v.dtype == weight.dtype or torch.is_autocast_enabled() else v.to(weight.dtype)
    return layer(x).to(v.dtype)


@dataclass
class HeadPass:
    """What one encoder pass leaves: every head's total (B, n_heads), the atoms' structure index, the
    positions and strain the totals are differentiable in (None when not asked), the vector features."""

    totals: torch.Tensor
    graph_of_atom: torch.Tensor
    positions: torch.Tensor | None
    strain: torch.Tensor | None
    vector_features: torch.Tensor

    def inputs(self) -> list[torch.Tensor]:
        """The autograd inputs of this pass, positions first: the ``inputs`` of ``autograd.grad``."""
        return [t for t in (self.positions, self.strain) if t is not None]


def strain_to_stress(batch: Any, grad_strain: torch.Tensor) -> torch.Tensor:
    """Stress (..., B, 3, 3), eV/Å^3, from dE/d strain: divided by each cell's volume; zeros for
    structures that are not fully periodic. Leading axes (e.g. one per head) broadcast."""
    volume = torch.abs(torch.linalg.det(batch.cell))
    periodic = batch.pbc.all(dim=1)
    safe = torch.where(periodic, volume, torch.ones_like(volume))
    return torch.where(periodic[:, None, None], grad_strain / safe[:, None, None], torch.zeros_like(grad_strain))
