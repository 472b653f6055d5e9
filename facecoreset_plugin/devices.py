"""One place that turns a user's ``--device`` value into a checked ``torch.device``."""

from __future__ import annotations

__all__ = ["resolve_device", "available_devices"]

import torch

from .errors import InputError


def available_devices() -> list[str]:
    """Devices usable here: ``["cpu", "cuda:0", ...]``."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + [f"cuda:{i}" for i in range(count)]


def resolve_device(device: str | torch.device | None, local_rank: int | None = None) -> torch.device:
    """Check ``device`` against this machine and return it with a CUDA index filled in.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device``, or None (= cpu).
        local_rank: under ``torchrun``, the process' local rank; a bare ``cuda`` then means
            ``cuda:<local_rank>``. None (single process): a bare ``cuda`` is the current GPU.

    Raises:
        InputError: a value that is not a device, or one this machine does not have; the
            message names the value and the available devices.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N "
                         f"(available here: {', '.join(available_devices())})") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise InputError(f"--device {device!r}: only cpu and cuda devices are supported "
                         f"(available here: {', '.join(available_devices())})")
    if not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available in this torch build/machine "
                         "(available here: cpu); use --device cpu")
    count = torch.cuda.device_count()
    index = dev.index
    if index is None:
        index = local_rank if local_rank is not None else torch.cuda.current_device()
        if index >= count:
            raise InputError(f"--device {device}: local rank {index} has no GPU, only {count} visible "
                             f"(available here: {', '.join(available_devices())}); start fewer processes per node")
    elif index >= count:
        raise InputError(f"--device {device}: only {count} CUDA device(s) visible "
                         f"(available here: {', '.join(available_devices())})")
    return torch.device("cuda", index)
