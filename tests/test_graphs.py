"""Neighbour lists against ASE, graphs and batches, the multi-dataset sampler, rank slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from conftest import run_cli
from scipy.stats import binom
from structures import emt_structures

from gfmkit.data import DatasetSpec, Store, structure_from_atoms, write_store
from gfmkit.data.graphs import GraphDataset, collate, make_loader, structure_graph
from gfmkit.data.neighbours import neighbour_list
from gfmkit.data.sampling import (
    DatasetMixer,
    GlobalBatchSampler,
    dataset_probabilities,
    draw_counts,
    sampling_plan,
)


def edge_set(edge_index, shift):
    return set(zip(edge_index[0].tolist(), edge_index[1].tolist(), map(tuple, np.asarray(shift).tolist())))


def ase_edges(atoms: Atoms, cutoff: float):
    i, j, shift = ase_neighbor_list("ijS", atoms, cutoff)
    return set(zip(j.tolist(), i.tolist(), map(tuple, shift.tolist())))


def random_triclinic(seed: int, repeat=(2, 2, 2), pbc=True) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.6) * repeat
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.15 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    atoms.pbc = pbc
    return atoms


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cutoff", [3.0, 5.0])
def test_periodic_triclinic_edges_equal_ase(seed, cutoff):
    atoms = random_triclinic(seed)
    edge_index, shift = neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
    assert edge_set(edge_index, shift) == ase_edges(atoms, cutoff)


@pytest.mark.parametrize("seed", range(3))
def test_cells_smaller_than_twice_the_cutoff_have_many_images(seed):
    atoms = random_triclinic(seed, repeat=(1, 1, 1))
    cutoff = 2.6 * max(atoms.cell.lengths())
    edge_index, shift = neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
    assert np.abs(shift).max() >= 2
    assert edge_set(edge_index, shift) == ase_edges(atoms, cutoff)
    # self-images appear: an atom is its own neighbour through the lattice
    assert any(j == i for j, i in edge_index.T.tolist())


@pytest.mark.parametrize(
    "pbc, vacuum", [((True, True, False), None), ((True, False, False), 4.0), ((False, True, True), 4.0)]
)
def test_mixed_periodicity_edges_equal_ase(pbc, vacuum):
    atoms = fcc111("Pt", (2, 3, 3), vacuum=vacuum, a=3.9)
    atoms.pbc = pbc
    atoms.rattle(0.05, seed=1)
    edge_index, shift = neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, 4.5)
    assert edge_set(edge_index, shift) == ase_edges(atoms, 4.5)
    assert np.all(shift[:, ~np.array(pbc)] == 0)


def test_non_periodic_edges_equal_ase_and_vectors_match():
    atoms = molecule("C6H6")
    edge_index, shift = neighbour_list(atoms.positions, np.zeros((3, 3)), atoms.pbc, 3.0)
    assert edge_set(edge_index, shift) == ase_edges(atoms, 3.0)
    periodic = random_triclinic(7)
    edge_index, shift = neighbour_list(periodic.positions, periodic.cell[:], periodic.pbc, 4.0)
    j, i = edge_index
    vectors = periodic.positions[j] - periodic.positions[i] + shift @ periodic.cell[:]
    i_ase, j_ase, d_ase = ase_neighbor_list("ijd", periodic, 4.0)
    assert np.allclose(np.sort(np.linalg.norm(vectors, axis=1)), np.sort(d_ase))


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    frames = emt_structures(12, stress=False)
    for atoms, gap in zip(frames, np.linspace(1, 2, 12)):
        atoms.info["gap"] = gap
    stores = []
    for name, part, spec_extra in (("emt", frames[:8], {}), ("gaps", frames[8:], {"targets": ["gap"]})):
        from gfmkit.data import LabelSpec

        spec = DatasetSpec(name=name, level_of_theory="EMT", labels=LabelSpec(properties={"gap": "gap"}), **spec_extra)
        structures = [structure_from_atoms(a, spec, "mem", i) for i, a in enumerate(part)]
        stores.append(Store(write_store(structures, root / f"{name}.bp", spec)))
    return stores


def test_graph_fields_and_masks(two_stores):
    dataset = GraphDataset(two_stores, cutoff=4.0)
    assert dataset.property_names == ["gap"] and len(dataset) == 12
    g = dataset[0]
    assert g.pos.dtype == torch.float64 and g.z.dtype == torch.long and g.cell.shape == (1, 3, 3)
    assert g.energy_mask.item() and g.forces_mask.item() and not g.stress_mask.item()
    assert not g.properties_mask.any() and g.dataset.item() == 0
    h = dataset[9]
    assert h.dataset.item() == 1 and h.properties_mask.all() and not h.energy_mask.item()
    assert h.properties.item() == pytest.approx(np.linspace(1, 2, 12)[9])
    j, i = g.edge_index
    r = g.pos[j] - g.pos[i] + torch.einsum("ek,kl->el", g.edge_shift, g.cell[0])
    assert float(r.norm(dim=1).max()) <= 4.0
    with pytest.raises(ValueError, match="float64 or float32"):
        structure_graph(two_stores[0].arrays(0), 0, 4.0, dtype=torch.bfloat16)
    assert GraphDataset(two_stores, 4.0, dtype=torch.float32)[0].pos.dtype == torch.float32


def test_batch_equals_one_by_one(two_stores):
    dataset = GraphDataset(two_stores, cutoff=4.0)
    graphs = [dataset[k] for k in (0, 3, 9, 5)]
    batch = collate(graphs)
    assert batch.num_graphs == 4 and batch.natoms.tolist() == [len(g.z) for g in graphs]
    for k, g in enumerate(graphs):
        part = batch.get_example(k)
        for key in ("z", "pos", "cell", "edge_index", "edge_shift", "energy", "forces", "properties", "dataset"):
            assert torch.equal(getattr(part, key), getattr(g, key)), key
    offsets = torch.cumsum(torch.tensor([0] + [len(g.z) for g in graphs[:-1]]), 0)
    expected = torch.cat([g.edge_index + o for g, o in zip(graphs, offsets)], dim=1)
    assert torch.equal(batch.edge_index, expected)
    assert collate([]) is None


def test_collate_builds_what_pyg_builds(two_stores):
    from torch_geometric.data import Batch

    dataset = GraphDataset(two_stores, cutoff=4.0)
    graphs = [dataset[k] for k in (7, 0, 11, 3, 3)]  # both stores, and one structure twice
    ours, pyg = collate(graphs), Batch.from_data_list(graphs)
    assert type(ours) is type(pyg) and list(ours.keys()) == list(pyg.keys())
    for key in pyg.keys():
        assert torch.equal(ours[key], pyg[key]) and ours[key].dtype == pyg[key].dtype, key
    for book in ("_slice_dict", "_inc_dict"):
        mine, theirs = getattr(ours, book), getattr(pyg, book)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs), book
    assert ours.num_graphs == 5 and [g.num_nodes for g in ours.to_data_list()] == [g.num_nodes for g in graphs]
    assert torch.equal(collate(graphs[:1]).edge_index, graphs[0].edge_index)


def test_split_selection_and_workers(two_stores):
    train = GraphDataset(two_stores, 4.0, split="train")
    expected = sum(len(s.split_indices("train")) for s in two_stores)
    assert len(train) == expected
    assert train.natoms.tolist() == [len(train[k].z) for k in range(len(train))]
    sampler = GlobalBatchSampler(DatasetMixer(train.head, seed=0), train.natoms, batch_size=3)
    serial = [b for b in make_loader(train, sampler)]
    sampler.set_epoch(0)
    sampler.load_state_dict({"epoch": 0, "start_batch": 0})
    parallel = [b for b in make_loader(train, sampler, num_workers=2)]
    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel):
        assert torch.equal(a.pos, b.pos) and torch.equal(a.edge_index, b.edge_index)


@pytest.mark.parametrize(
    "strategy, options, expected",
    [
        ("proportional", {}, [0.5, 0.3, 0.2]),
        ("uniform", {}, [1 / 3, 1 / 3, 1 / 3]),
        ("temperature", {"temperature": 2.0}, np.sqrt([500, 300, 200]) / np.sqrt([500, 300, 200]).sum()),
        ("weights", {"weights": [1.0, 0.0, 3.0]}, [0.25, 0.0, 0.75]),
    ],
)
def test_sampler_frequencies_within_binomial_intervals(strategy, options, expected):
    groups = np.repeat([0, 1, 2], [500, 300, 200])
    assert np.allclose(dataset_probabilities([500, 300, 200], strategy, **options), expected)
    mixer = DatasetMixer(groups, strategy=strategy, num_samples=20_000, seed=3, **options)
    counts = np.bincount(groups[mixer.sequence(0)], minlength=3)
    for count, p in zip(counts, expected):
        low, high = binom.interval(0.999, 20_000, p)
        assert low <= count <= high, (strategy, counts, expected)


def test_proportional_epoch_draws_every_structure_once_and_strategies_get_exact_shares():
    groups = np.repeat([2, 0, 1], [7, 50, 13])  # datasets need not be numbered in store order
    once = DatasetMixer(groups, seed=4).sequence(2)
    assert sorted(once.tolist()) == list(range(len(groups)))
    mixer = DatasetMixer(groups, strategy="temperature", temperature=3.0, num_samples=1001, seed=4)
    counts = np.bincount(groups[mixer.sequence(0)], minlength=3)
    share = mixer.probabilities * 1001
    assert counts.sum() == 1001 and np.all(np.abs(counts - share) < 1)
    assert np.array_equal(counts, draw_counts(mixer.probabilities, 1001))
    plan = sampling_plan({"a": 50, "b": 13, "c": 7}, "temperature", temperature=3.0, num_samples=1001)
    assert plan["draws_per_epoch"].sum() == 1001 and np.array_equal(plan["draws_per_epoch"], counts)


def test_sampler_is_seeded_and_exhausts_each_dataset_before_repeating():
    groups = np.repeat([0, 1], [30, 10])
    mixer = DatasetMixer(groups, strategy="uniform", num_samples=40, seed=5)
    first, again = mixer.sequence(0), mixer.sequence(0)
    assert np.array_equal(first, again) and not np.array_equal(first, mixer.sequence(1))
    small = [i for i in first if groups[i] == 1]
    assert len(set(small[:10])) == min(10, len(small))  # one full pass before any repeat


def test_budgets_bound_every_batch():
    natoms = np.array([5, 40, 3, 12, 7, 90, 2] * 10)
    edges = natoms * 30
    mixer = DatasetMixer(np.zeros(len(natoms), dtype=int), seed=0)
    sampler = GlobalBatchSampler(mixer, natoms, max_atoms=60, max_edges=1500, edges=edges)
    batches = sampler.global_batches()
    assert sorted(np.concatenate(batches).tolist()) == sorted(mixer.sequence(0).tolist())
    for batch in batches:
        assert len(batch) == 1 or (natoms[batch].sum() <= 60 and edges[batch].sum() <= 1500)
    assert any(len(b) == 1 and natoms[b[0]] == 90 for b in batches)  # too big for the budget: alone


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_slices_partition_every_global_batch(world_size):
    natoms = np.random.default_rng(0).integers(1, 50, size=101)
    groups = np.random.default_rng(1).integers(0, 3, size=101)
    single = GlobalBatchSampler(DatasetMixer(groups, seed=9), natoms, batch_size=7)
    ranks = [GlobalBatchSampler(DatasetMixer(groups, seed=9), natoms, batch_size=7, rank=r, world_size=world_size)
             for r in range(world_size)]
    per_rank = [list(r) for r in ranks]
    for step, batch in enumerate(single):
        union = sorted(i for r in range(world_size) for i in per_rank[r][step])
        assert union == sorted(batch)
        parts = [per_rank[r][step] for r in range(world_size)]
        assert [i for part in parts for i in part] == batch  # contiguous slices in rank order
    tiny = [list(GlobalBatchSampler(DatasetMixer(groups[:1], seed=0), natoms[:1], batch_size=4, rank=r, world_size=2))
            for r in range(2)]
    assert sorted(tiny) == [[[]], [[0]]]  # fewer items than ranks: an empty slice, not an error


def test_sampler_resume_continues_where_it_stopped():
    natoms = np.arange(1, 41)
    sampler = GlobalBatchSampler(DatasetMixer(np.zeros(40, dtype=int), seed=2), natoms, batch_size=4)
    full = list(sampler)
    resumed = GlobalBatchSampler(DatasetMixer(np.zeros(40, dtype=int), seed=2), natoms, batch_size=4)
    resumed.load_state_dict({"epoch": 0, "start_batch": 6})
    assert list(resumed) == full[6:]
    assert resumed.state_dict() == {"epoch": 1, "start_batch": 0}


@pytest.mark.mpi
def test_two_ranks_see_the_same_multiset_per_step_as_one(run_mpi, demo_dir):
    code = """
    import numpy as np
    from gfmkit.comm import world
    from gfmkit.data import open_stores
    from gfmkit.data.graphs import GraphDataset, make_loader
    from gfmkit.data.sampling import DatasetMixer, GlobalBatchSampler
    comm = world()
    data = GraphDataset(open_stores([{demo!r}]), 4.0, split="train")
    sampler = GlobalBatchSampler(DatasetMixer(data.head, strategy="temperature", temperature=2.0, seed=4),
                                 data.natoms, batch_size=5, rank=comm.rank, world_size=comm.size)
    steps = []
    for batch in make_loader(data, sampler):
        # identify structures by (head, energy): what the rank really loaded, not just indices
        steps.append([] if batch is None else sorted(zip(batch.dataset.tolist(), batch.energy.tolist())))
    emit(steps)
    """.format(demo=str(demo_dir))
    two = run_mpi(code, n=2)
    one = run_mpi(code, n=1)
    (single,) = one.emitted[0]
    rank0, rank1 = two.emitted[0][0], two.emitted[1][0]
    assert len(single) == len(rank0) == len(rank1) > 3
    for step, expected in enumerate(single):
        assert sorted(map(tuple, rank0[step] + rank1[step])) == sorted(map(tuple, expected))
    assert all(rank0) and all(rank1)  # batches of 5 over 2 ranks: both always busy


def test_sampling_plan_and_cli(demo_dir, tmp_path):

    from gfmkit.data.sampling import sampling_plan

    plan = sampling_plan({"big": 900, "small": 100}, "temperature", temperature=2.0)
    assert plan["probability"].tolist() == pytest.approx([30 / 40, 10 / 40])
    assert plan["passes"].tolist() == pytest.approx([750 / 900, 250 / 100])
    assert sampling_plan({"big": 900, "small": 100}, "uniform")["draws_per_epoch"].tolist() == [500, 500]
    out = run_cli("data", "sampling", str(demo_dir), "--figure", str(tmp_path / "s.png"))
    assert out.returncode == 0, out.stderr
    assert "temperature T=2" in out.stdout and "clusters" in out.stdout
    assert (tmp_path / "s.png").exists()
