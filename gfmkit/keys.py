"""Names of batch fields, store variables and result columns, in one place.

Every module refers to these constants instead of spelling strings, so a typo is an
``AttributeError`` at import time rather than a silently missing field.
"""

# Per-atom fields of a structure / batch.
Z = "z"  # atomic numbers
POSITIONS = "pos"  # Å
FORCES = "forces"  # eV/Å

# Per-structure fields.
CELL = "cell"  # 3x3 lattice vectors as rows, Å; zeros where not periodic
PBC = "pbc"  # 3 bools
ENERGY = "energy"  # total energy, eV
STRESS = "stress"  # 3x3, eV/Å^3, ASE sign convention
CHARGE = "charge"  # total charge, e
SPIN = "spin"  # spin multiplicity
NATOMS = "natoms"
DATASET = "dataset"  # index of the structure's head, from the dataset registry
SPLIT = "split"  # 0 train, 1 val, 2 test
SOURCE_INDEX = "source_index"  # position of the structure in its source (file, database, iterable)

# Graph fields, built at load time.
EDGE_INDEX = "edge_index"  # (2, E): messages flow from edge_index[0] (source j) to edge_index[1] (centre i)
EDGE_SHIFT = "edge_shift"  # (E, 3) integer cell offsets: r_ij = pos[j] - pos[i] + shift @ cell

# Label masks in a batch (a dataset may lack a label another has).
ENERGY_MASK = "energy_mask"
FORCES_MASK = "forces_mask"
STRESS_MASK = "stress_mask"

# Names of declarable targets of a dataset. Graph-level scalar properties use their own names.
POTENTIAL_TARGETS = (ENERGY, FORCES, STRESS)

# Split labels, in the order of their integer codes.
SPLITS = ("train", "val", "test")

# Result / table columns.
HEAD = "head"
LEVEL_OF_THEORY = "level_of_theory"
ENERGY_PER_ATOM = "energy_per_atom"

# Graph-level property targets of property tasks, in a batch: (B, P) values and mask, P = property names.
PROPERTIES = "properties"
PROPERTIES_MASK = "properties_mask"

# Error columns of evaluations and validation records (mean absolute errors), and their units.
ENERGY_MAE = "energy_mae"  # per atom
FORCES_MAE = "forces_mae"  # per force component
STRESS_MAE = "stress_mae"  # per stress component
PROPERTY_MAE = "property_mae"  # a property head on its own target
ERROR_COLUMNS = (ENERGY_MAE, FORCES_MAE, STRESS_MAE, PROPERTY_MAE)

# Units, for tables and axis labels. A graph-level property carries the units it was labelled in.
PROPERTY_UNITS = "property units"
ERROR_UNITS = {ENERGY_MAE: "eV/atom", FORCES_MAE: "eV/Å", STRESS_MAE: "eV/Å³", PROPERTY_MAE: PROPERTY_UNITS}
#: Units of the quantities evaluations compare (parity plots); any other quantity is a property.
QUANTITY_UNITS = {ENERGY: "eV", ENERGY_PER_ATOM: "eV/atom", FORCES: "eV/Å", STRESS: "eV/Å³"}
