"""What first-run set-up will download, from where, through which proxy and about how big, decided before it starts.

On ordinary Linux, `pip install torch` from PyPI gets the CUDA build (some
2.7 GB in about 30 packages); most QGIS users have no NVIDIA GPU and need only
the CPU build (about 200 MB). So the CPU build is the default, and the CUDA build
is offered only when `nvidia-smi` lists a GPU and the user ticks it. Pure
functions of plain data (no QGIS), so every branch is tested anywhere.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional
from urllib.parse import quote

from .contract import human_size

TORCH_VERSION = "2.13.0"
# PyTorch's own index of CPU-only wheels (all platforms); PyPI stays an extra
# index for torch's dependencies.
TORCH_CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
PYPI_INDEX_URL = "https://pypi.org/simple"
# Approximate download sizes of torch 2.13 for Linux x86_64 with its dependencies.
CPU_DOWNLOAD_BYTES = 200 * 1024 ** 2
CUDA_DOWNLOAD_BYTES = int(2.7 * 1024 ** 3)
# PyPI's torch is the CUDA build on Linux only (CPU-only on Windows, no CUDA on macOS).
CUDA_FROM_PYPI_SYSTEMS = ("Linux",)
NVIDIA_SMI_TIMEOUT_S = 10.0
# QGIS's proxy types (QgsSettings proxy/proxyType) and the URL scheme pip takes for each;
# "DefaultProxy" means the system's, which pip reads from the environment itself.
PROXY_SCHEMES = {"HttpProxy": "http", "HttpCachingProxy": "http", "Socks5Proxy": "socks5"}


@dataclass(frozen=True)
class Proxy:
    """The proxy pip must use: QGIS's network settings as plain data."""

    scheme: str
    host: str
    port: int
    user: str = ""
    password: str = ""

    def url(self) -> str:
        """For pip's --proxy (passed as PIP_PROXY, so the password never shows in a command line or log)."""
        credentials = ""
        if self.user:
            password = ":" + quote(self.password, safe="") if self.password else ""
            credentials = quote(self.user, safe="") + password + "@"
        return f"{self.scheme}://{credentials}{self.host}:{self.port}"

    def shown(self) -> str:
        """The proxy as the user may see it: no password."""
        return f"{self.scheme}://{self.host}:{self.port}"


def proxy_from_qgis(values: Mapping[str, Any]) -> Optional[Proxy]:
    """The proxy from QGIS's settings (keys as in QgsSettings: proxy/proxyEnabled, proxy/proxyHost, ...).

    None when no proxy is enabled, when QGIS defers to the system proxy (pip reads
    that from the environment), or when the type is one pip cannot use.
    """
    enabled = str(values.get("proxy/proxyEnabled", "false")).lower() in ("true", "1")
    host = str(values.get("proxy/proxyHost", "") or "").strip()
    scheme = PROXY_SCHEMES.get(str(values.get("proxy/proxyType", "HttpProxy") or "HttpProxy"))
    if not (enabled and host and scheme):
        return None
    try:
        port = int(values.get("proxy/proxyPort", 0) or 0)
    except (TypeError, ValueError):
        port = 0
    return Proxy(scheme, host, port or 8080, str(values.get("proxy/proxyUser", "") or ""),
                 str(values.get("proxy/proxyPassword", "") or ""))


def nvidia_gpus(which: Callable[[str], Optional[str]] = shutil.which,
                timeout: float = NVIDIA_SMI_TIMEOUT_S) -> list[str]:
    """The NVIDIA GPUs `nvidia-smi -L` lists ("GPU 0: NVIDIA ... (UUID: ...)" lines), none without the tool."""
    tool = which("nvidia-smi")
    if tool is None:
        return []
    try:
        done = subprocess.run([tool, "-L"], capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    lines = done.stdout.decode("utf-8", errors="replace").splitlines()
    return [line.split(":", 1)[1].split("(UUID")[0].strip() for line in lines
            if line.startswith("GPU ") and ":" in line]


@dataclass(frozen=True)
class DownloadPlan:
    """The PyTorch that set-up installs and what the dialog says about it.

    torch_args: pip install arguments for PyTorch; empty when the base Python already has it.
    build: "cpu", "cuda", "custom" (the settings name a requirement) or "present".
    download_bytes: approximate size of the download, None when unknown.
    cuda_offered: an NVIDIA GPU was found and the CUDA build can come from PyPI here.
    """

    torch_args: list[str]
    build: str
    download_bytes: Optional[int]
    cuda_offered: bool
    gpus: list[str] = field(default_factory=list)
    proxy: Optional[Proxy] = None

    def pip_environment(self) -> dict[str, str]:
        """Environment variables for every pip step (the proxy, which also serves the backend's dependencies)."""
        return {"PIP_PROXY": self.proxy.url()} if self.proxy is not None else {}

    def summary(self) -> str:
        """What will be downloaded, from where and about how big, for the set-up dialog."""
        if self.build == "present":
            torch = "PyTorch is already installed in this Python: it is not downloaded again."
        elif self.build == "custom":
            torch = (f"PyTorch as set under 'PyTorch for set-up' in the settings: pip install "
                     f"{shlex.join(self.torch_args)} (size unknown).")
        elif self.build == "cuda":
            torch = (f"PyTorch {TORCH_VERSION}, CUDA build for {', '.join(self.gpus)}, from PyPI: "
                     f"about {human_size(CUDA_DOWNLOAD_BYTES)}.")
        else:
            torch = (f"PyTorch {TORCH_VERSION}, CPU build, from PyTorch's CPU wheel index: "
                     f"about {human_size(CPU_DOWNLOAD_BYTES)}.")
        lines = [f"Downloads: {torch}",
                 "Also the backend's small dependencies (safetensors, tqdm) from PyPI. The SlimDiffSR backend "
                 "and its default model come with the plugin: no model is downloaded."]
        if self.proxy is not None:
            lines.append(f"Through QGIS's proxy {self.proxy.shown()}.")
        return "\n".join(lines)


def download_plan(gpus: list[str], use_cuda: bool, system: str, torch_installed: Optional[str],
                  custom_requirement: str = "", proxy: Optional[Proxy] = None) -> DownloadPlan:
    """Choose the PyTorch build to install.

    gpus: from `nvidia_gpus()`; use_cuda: the user ticked the CUDA build;
    system: `platform.system()`; torch_installed: the version the base Python
    already has (None when absent); custom_requirement: the settings' override.
    """
    cuda_offered = bool(gpus) and system in CUDA_FROM_PYPI_SYSTEMS
    if custom_requirement.strip():
        return DownloadPlan(shlex.split(custom_requirement), "custom", None, cuda_offered, gpus, proxy)
    if torch_installed is not None:
        return DownloadPlan([], "present", 0, cuda_offered, gpus, proxy)
    if cuda_offered and use_cuda:
        return DownloadPlan([f"torch=={TORCH_VERSION}"], "cuda", CUDA_DOWNLOAD_BYTES, True, gpus, proxy)
    return DownloadPlan([f"torch=={TORCH_VERSION}", "--index-url", TORCH_CPU_INDEX_URL,
                         "--extra-index-url", PYPI_INDEX_URL], "cpu", CPU_DOWNLOAD_BYTES, cuda_offered, gpus, proxy)


def cuda_choice_label(plan: DownloadPlan) -> str:
    """The text of the CUDA check box, with both sizes so the user weighs them."""
    return (f"Use the CUDA build for {', '.join(plan.gpus)} (about {human_size(CUDA_DOWNLOAD_BYTES)} "
            f"instead of about {human_size(CPU_DOWNLOAD_BYTES)} for the CPU build)")
