"""A description of the machine a benchmark ran on, stored beside its numbers."""

from __future__ import annotations

import datetime as dt
import os
import platform

import torch


def machine_info(device: torch.device) -> dict[str, object]:
    """CPU, core count, memory, torch version and (on CUDA) the GPU's name."""
    info: dict[str, object] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
