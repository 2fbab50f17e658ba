"""What set-up says it will download: the CPU build by default, CUDA only for a detected NVIDIA GPU when ticked."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from slimdiffsr_qgis.contract import human_size
from slimdiffsr_qgis.download_plan import (CPU_DOWNLOAD_BYTES, CUDA_DOWNLOAD_BYTES, PYPI_INDEX_URL, TORCH_CPU_INDEX_URL,
                                           cuda_choice_label, download_plan, nvidia_gpus, proxy_from_qgis)

GPU_LINE = "GPU 0: NVIDIA GeForce RTX 3090 (UUID: GPU-5a1c3f2e-0000-1111-2222-333344445555)"


def fake_nvidia_smi(folder: Path, output: str, code: int = 0) -> Path:
    """A real executable named nvidia-smi that prints what the real one prints for `-L`."""
    folder.mkdir(parents=True, exist_ok=True)
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n[ \"$1\" = \"-L\" ] || exit 9\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return folder


def which_on(folder: Path):
    return lambda name: shutil.which(name, path=str(folder))


def test_without_an_nvidia_gpu_the_plan_is_the_cpu_build_from_the_cpu_index_with_its_size(tmp_path):
    gpus = nvidia_gpus(which=which_on(tmp_path))
    assert gpus == []
    plan = download_plan(gpus, use_cuda=True, system="Linux", torch_installed=None)
    assert plan.build == "cpu" and not plan.cuda_offered
    assert plan.torch_args == ["torch==2.13.0", "--index-url", TORCH_CPU_INDEX_URL, "--extra-index-url", PYPI_INDEX_URL]
    assert plan.download_bytes == CPU_DOWNLOAD_BYTES
    assert "CPU build" in plan.summary() and human_size(CPU_DOWNLOAD_BYTES) in plan.summary()
    assert "no model is downloaded" in plan.summary()


def test_a_gpu_listed_by_nvidia_smi_offers_the_cuda_build_with_both_sizes_and_the_tick_chooses_it(tmp_path):
    tools = fake_nvidia_smi(tmp_path / "bin", GPU_LINE)
    gpus = nvidia_gpus(which=which_on(tools))
    assert gpus == ["NVIDIA GeForce RTX 3090"]
    offered = download_plan(gpus, use_cuda=False, system="Linux", torch_installed=None)
    assert offered.cuda_offered and offered.build == "cpu", "CUDA is offered, never chosen without the tick"
    label = cuda_choice_label(offered)
    assert "RTX 3090" in label and human_size(CUDA_DOWNLOAD_BYTES) in label and human_size(CPU_DOWNLOAD_BYTES) in label
    ticked = download_plan(gpus, use_cuda=True, system="Linux", torch_installed=None)
    assert ticked.build == "cuda" and ticked.torch_args == ["torch==2.13.0"]
    assert ticked.download_bytes == CUDA_DOWNLOAD_BYTES and human_size(CUDA_DOWNLOAD_BYTES) in ticked.summary()


def test_nvidia_smi_without_a_gpu_line_or_failing_offers_nothing(tmp_path):
    empty = fake_nvidia_smi(tmp_path / "empty", "No devices were found")
    failing = fake_nvidia_smi(tmp_path / "failing", "NVIDIA-SMI has failed", code=9)
    assert nvidia_gpus(which=which_on(empty)) == [] and nvidia_gpus(which=which_on(failing)) == []


def test_cuda_is_not_offered_where_pypi_has_no_cuda_build():
    for system in ("Windows", "Darwin"):
        plan = download_plan(["NVIDIA RTX A2000"], use_cuda=True, system=system, torch_installed=None)
        assert not plan.cuda_offered and plan.build == "cpu"


def test_torch_already_in_qgis_python_is_not_downloaded_and_a_custom_requirement_is_used_verbatim():
    present = download_plan([], use_cuda=False, system="Linux", torch_installed="2.13.0")
    assert present.torch_args == [] and "not downloaded again" in present.summary()
    custom = download_plan([], False, "Linux", None,
                           custom_requirement="torch==2.13.0 --index-url https://example.invalid/cu")
    assert custom.build == "custom" and custom.download_bytes is None
    assert custom.torch_args == ["torch==2.13.0", "--index-url", "https://example.invalid/cu"]
    assert "size unknown" in custom.summary()


def test_qgis_proxy_settings_reach_pip_through_its_environment_without_showing_the_password():
    proxy = proxy_from_qgis({"proxy/proxyEnabled": "true", "proxy/proxyType": "HttpProxy",
                             "proxy/proxyHost": "proxy.example.invalid", "proxy/proxyPort": "3128",
                             "proxy/proxyUser": "ana", "proxy/proxyPassword": "p@ss:word"})
    plan = download_plan([], False, "Linux", None, proxy=proxy)
    assert plan.pip_environment() == {"PIP_PROXY": "http://ana:p%40ss%3Aword@proxy.example.invalid:3128"}
    assert "proxy.example.invalid:3128" in plan.summary() and "p@ss" not in plan.summary()
    assert proxy_from_qgis({"proxy/proxyEnabled": False, "proxy/proxyHost": "h"}) is None
    system = {"proxy/proxyEnabled": True, "proxy/proxyType": "DefaultProxy", "proxy/proxyHost": "h"}
    assert proxy_from_qgis(system) is None
    assert download_plan([], False, "Linux", None).pip_environment() == {}
