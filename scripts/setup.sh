#!/usr/bin/env bash
# Idempotent set-up on Debian 12: QGIS/GDAL from Debian, a venv on Debian's Python that
# sees them (system site packages), CPU torch, and this project installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."

# qgis brings qgis_process.bin, which the Processing tests run as users script it.
apt_packages=(python3-qgis qgis-providers python3-gdal gdal-bin python3-venv qgis)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

[ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv
# torch is pinned to the CPU build; numpy stays < 2 because Debian's GDAL and QGIS are built against 1.24.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 'numpy<2'
.venv/bin/pip install -q --disable-pip-version-check -e '.[train,test,distributed]'
