#!/usr/bin/env bash
# Install a SLURM controller/compute daemon and MUNGE on Debian (as root), for the single-node
# test cluster of tests/test_slurm.py. Idempotent and quiet: installs only what is missing.
#   bash scripts/install_slurm.sh
# Installing does not start or configure anything: the tests start private daemons with their
# own munge key and slurm.conf in a temporary folder (tests/slurm_cluster.py).
set -euo pipefail

pkgs="slurm-wlm munge"
missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -z "$missing" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_slurm.sh: need root and apt-get to install: $missing" >&2
  echo "  (Debian: sudo apt-get install -y $missing)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The packages' postinst may try to start services; in containers without systemd that is a
# harmless no-op, so a failed service start must not fail the install.
apt-get install -y -qq --no-install-recommends $missing >/dev/null
for bin in slurmctld slurmd munged sbatch squeue scontrol sinfo; do
  command -v "$bin" >/dev/null || { echo "install_slurm.sh: $bin missing after install" >&2; exit 1; }
done
