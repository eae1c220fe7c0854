"""Structures in, ADIOS2 stores out, stores read back (one per dataset, or many as one), graphs out."""

from gfmkit.data.hydragnn import HydraGNNFormatError, HydraGNNStore
from gfmkit.data.ingest import IngestReport, convert, read_structures
from gfmkit.data.labels import Problem, StructureError, structure_from_atoms
from gfmkit.data.multi import DatasetRegistry, MultiStore, open_stores
from gfmkit.data.spec import DatasetSpec, LabelSpec, ValidationSpec
from gfmkit.data.store_read import Store, StoreError
from gfmkit.data.store_write import write_store
from gfmkit.data.structure import Structure
from gfmkit.data.validate import validate

__all__ = [
    "DatasetRegistry",
    "DatasetSpec",
    "HydraGNNFormatError",
    "HydraGNNStore",
    "IngestReport",
    "LabelSpec",
    "MultiStore",
    "Problem",
    "Store",
    "StoreError",
    "Structure",
    "StructureError",
    "ValidationSpec",
    "convert",
    "open_stores",
    "read_structures",
    "structure_from_atoms",
    "validate",
    "write_store",
]
