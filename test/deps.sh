#!/usr/bin/env bash
# Installs the Debian packages that building and testing Sluice need. Runs as
# root; installs only what is missing, so it is quick on a machine that has them.
set -euo pipefail
pkgs=(clang llvm libbpf-dev linux-libc-dev bpftool iptables iproute2 util-linux curl wrk
  protobuf-compiler libprotobuf-dev nghttp2-client nginx-light libnginx-mod-stream linux-perf prometheus tcpdump openssl)
# The local Kubernetes cluster's packages (etcd and the programs its images map to).
cluster_deps="$(dirname "$0")/cluster/deps.txt"
if [ -f "$cluster_deps" ]; then
  while read -r p; do
    case "$p" in ''|'#'*) ;; *) pkgs+=("$p") ;; esac
  done <"$cluster_deps"
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${missing[*]}; run as root or: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The tests need the BPF filesystem; the agent mounts it too, but check early.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
