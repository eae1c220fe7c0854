"""Numerical precision policies, scoped by a context manager.

gfmkit never calls ``torch.set_default_dtype``: it would leak into every later notebook cell. A policy
says which dtype parameters, inputs and matmuls use; :func:`precision_scope` enables what the policy
needs (autocast for ``bf16-autocast``) only inside the ``with`` block.

Sensitive quantities (positions, edge vectors, radial basis, scatter sums, energies, reference
energies) always use :attr:`PrecisionPolicy.sensitive_dtype`, which is never below float32:
bfloat16 resolves 10 Å only to about 0.06 Å.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from dataclasses import dataclass

import torch


class Precision(str, enum.Enum):
    FP64 = "fp64"
    FP32 = "fp32"
    BF16_AUTOCAST = "bf16-autocast"  # float32 parameters, bfloat16 matmuls via torch.autocast
    BF16_PURE = "bf16-pure"  # bfloat16 parameters and activations; sensitive sums stay float32


@dataclass(frozen=True)
class PrecisionPolicy:
    """Dtypes a policy implies. Build with :func:`get_policy`."""

    precision: Precision
    param_dtype: torch.dtype
    compute_dtype: torch.dtype
    sensitive_dtype: torch.dtype

    @property
    def autocast(self) -> bool:
        return self.precision is Precision.BF16_AUTOCAST

    @property
    def name(self) -> str:
        return self.precision.value


_POLICIES = {
    Precision.FP64: (torch.float64, torch.float64, torch.float64),
    Precision.FP32: (torch.float32, torch.float32, torch.float32),
    Precision.BF16_AUTOCAST: (torch.float32, torch.bfloat16, torch.float32),
    Precision.BF16_PURE: (torch.bfloat16, torch.bfloat16, torch.float32),
}


def get_policy(precision: str | Precision | PrecisionPolicy) -> PrecisionPolicy:
    """Policy for a name such as ``"fp32"`` or ``"bf16-autocast"``."""
    if isinstance(precision, PrecisionPolicy):
        return precision
    try:
        key = Precision(precision)
    except ValueError:
        names = ", ".join(p.value for p in Precision)
        raise ValueError(f"unknown precision {precision!r}; choose one of {names}") from None
    return PrecisionPolicy(key, *_POLICIES[key])


def check_supported(policy: PrecisionPolicy, device: torch.device | str) -> None:
    """Raise if ``device`` cannot run ``policy``: no silent fallback to another precision."""
    device = torch.device(device)
    uses_bf16 = torch.bfloat16 in (policy.param_dtype, policy.compute_dtype)
    if device.type == "cuda" and uses_bf16 and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"precision {policy.name} needs bfloat16, which {torch.cuda.get_device_name(device)} lacks")
    if device.type == "mps" and policy.precision is Precision.FP64:
        raise RuntimeError("precision fp64 is not supported on Apple MPS devices")


@contextlib.contextmanager
def precision_scope(
    precision: str | Precision | PrecisionPolicy, device: torch.device | str = "cpu"
) -> Iterator[PrecisionPolicy]:
    """Run the block under ``precision`` on ``device``; nothing global survives the block."""
    policy = get_policy(precision)
    device = torch.device(device)
    check_supported(policy, device)
    if policy.autocast:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield policy
    else:
        # Autocast from an enclosing scope must not leak into an explicit fp32/fp64 block.
        with torch.autocast(device_type=device.type, enabled=False):
            yield policy
