"""What hardware this run has: CPU model and features, cores, RAM, CUDA devices, Apple Metal.

Detection never imports torch, mlx or llama_cpp: it reads /proc, sysctl, nvidia-smi or
NVML, and only asks torch when the caller has already imported it.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEVICES = ("cpu", "cuda", "metal")
_INTERESTING_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vnni", "avx_vnni", "amx_tile")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total_mb: int | None = None
    memory_free_mb: int | None = None
    driver: str | None = None


@dataclass(frozen=True)
class Hardware:
    system: str
    machine: str
    cpu_model: str
    cpu_features: tuple[str, ...]
    logical_cores: int
    physical_cores: int | None
    ram_total_mb: int | None
    cuda_devices: tuple[GpuInfo, ...] = ()
    cuda_probe: str = ""
    metal: bool = False
    metal_chip: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def has(self, device: str) -> bool:
        if device == "cpu":
            return True
        if device == "cuda":
            return bool(self.cuda_devices)
        if device == "metal":
            return self.metal
        return False

    def available_devices(self) -> list[str]:
        return [d for d in DEVICES if self.has(d)]

    def missing_reason(self, device: str) -> str:
        """Why ``device`` is not usable here, for skip messages."""
        if device == "cuda":
            return f"requires a CUDA device; none found ({self.cuda_probe or 'no probe succeeded'})"
        if device == "metal":
            return f"requires Apple Metal; this is {self.system} {self.machine}"
        return f"unknown device {device!r}; known: {', '.join(DEVICES)}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cuda_devices"] = [asdict(g) for g in self.cuda_devices]
        return data

    def header_line(self) -> str:
        ram = f"{self.ram_total_mb / 1024:.0f} GiB RAM" if self.ram_total_mb else "RAM unknown"
        feats = " ".join(self.cpu_features) or "no SIMD flags detected"
        line = f"{self.cpu_model} ({feats}), {self.logical_cores} logical cores, {ram}"
        if self.cuda_devices:
            gpus = ", ".join(f"{g.name} {g.memory_total_mb or '?'} MiB" for g in self.cuda_devices)
            line += f"; CUDA: {gpus}"
        if self.metal:
            line += f"; Metal: {self.metal_chip or 'yes'}"
        return line


def _linux_cpu() -> tuple[str, tuple[str, ...]]:
    model, flags = "unknown CPU", set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and model == "unknown CPU":
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    features = [f.upper() for f in _INTERESTING_FLAGS if f in flags]
    if {"asimd", "neon"} & flags or platform.machine() in ("aarch64", "arm64"):
        features.append("NEON")
    return model, tuple(features)


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _darwin_cpu() -> tuple[str, tuple[str, ...]]:
    model = _sysctl("machdep.cpu.brand_string") or platform.processor() or "unknown CPU"
    features: list[str] = []
    if platform.machine() == "arm64":
        features.append("NEON")
    else:
        raw = (_sysctl("machdep.cpu.features") or "") + " " + (_sysctl("machdep.cpu.leaf7_features") or "")
        flags = {f.lower() for f in raw.split()}
        features = [f.upper() for f in _INTERESTING_FLAGS if f in flags or f.replace("_", "") in flags]
    return model, tuple(features)


def _cuda_from_nvidia_smi() -> tuple[tuple[GpuInfo, ...], str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return (), "nvidia-smi not found"
    query = "--query-gpu=index,name,memory.total,memory.free,driver_version"
    try:
        out = subprocess.run(
            [exe, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return (), f"nvidia-smi failed: {exc}"
    if out.returncode != 0:
        return (), f"nvidia-smi exited {out.returncode}: {out.stderr.strip()[:200]}"
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        gpus.append(GpuInfo(int(parts[0]), parts[1], _int_or_none(parts[2]), _int_or_none(parts[3]), parts[4]))
    return tuple(gpus), "nvidia-smi" if gpus else "nvidia-smi lists no GPU"


def _int_or_none(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def _cuda_from_nvml() -> tuple[tuple[GpuInfo, ...], str]:
    try:
        import pynvml  # from nvidia-ml-py
    except ImportError:
        return (), "nvidia-ml-py not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses vary by version
        return (), f"NVML init failed: {exc}"
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(GpuInfo(i, str(name), mem.total // 2**20, mem.free // 2**20))
        return tuple(gpus), "nvml"
    finally:
        pynvml.nvmlShutdown()


def _cuda_from_loaded_torch() -> tuple[tuple[GpuInfo, ...], str]:
    torch = sys.modules.get("torch")
    if torch is None:
        return (), "torch not imported"
    if not torch.cuda.is_available():
        return (), "torch.cuda.is_available() is False"
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(GpuInfo(i, props.name, props.total_memory // 2**20))
    return tuple(gpus), "torch"


def detect_cuda() -> tuple[tuple[GpuInfo, ...], str]:
    reasons = []
    for probe in (_cuda_from_nvidia_smi, _cuda_from_nvml, _cuda_from_loaded_torch):
        gpus, how = probe()
        if gpus:
            return gpus, how
        reasons.append(how)
    return (), "; ".join(reasons)


@functools.lru_cache(maxsize=1)
def detect() -> Hardware:
    """Probe this machine once per process."""
    system, machine = platform.system(), platform.machine()
    if system == "Darwin":
        cpu_model, features = _darwin_cpu()
    else:
        cpu_model, features = _linux_cpu()
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        ram = psutil.virtual_memory().total // 2**20
    except ImportError:
        physical, ram = None, None
    cuda: tuple[GpuInfo, ...]
    if os.environ.get("MINERVA_HIDE_CUDA"):
        cuda, probe = (), "hidden by MINERVA_HIDE_CUDA"
    else:
        cuda, probe = detect_cuda()
    metal = system == "Darwin" and machine == "arm64"
    return Hardware(
        system=system,
        machine=machine,
        cpu_model=cpu_model,
        cpu_features=features,
        logical_cores=os.cpu_count() or 1,
        physical_cores=physical,
        ram_total_mb=ram,
        cuda_devices=cuda,
        cuda_probe=probe,
        metal=metal,
        metal_chip=cpu_model if metal else None,
    )
