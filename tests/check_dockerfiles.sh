#!/usr/bin/env bash
# Keeps docker/Dockerfile* from drifting from scripts/install-deps.sh (the one
# package list): every Dockerfile must run install-deps.sh, and every package
# it installs itself must be either in `install-deps.sh --list` or declared on
# its `# extra-packages:` line (packages install-deps.sh cannot provide, e.g.
# NCCL from NVIDIA's repository). Also: the CPU image is the Debian 12 the
# script targets, and the CUDA image builds the cuda preset.
#   tests/check_dockerfiles.sh [REPO_ROOT]
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
mapfile -t listed < <(bash "$root/scripts/install-deps.sh" --list)
fail=0
err() { echo "check_dockerfiles: $*" >&2; fail=1; }

for f in "$root"/docker/Dockerfile "$root"/docker/Dockerfile.cpu; do
  [[ -f "$f" ]] || { err "$f missing"; continue; }
  name=$(basename "$f")
  grep -q 'bash scripts/install-deps.sh' "$f" || err "$name does not run scripts/install-deps.sh"
  grep -q 'COPY scripts/install-deps.sh' "$f" || err "$name does not copy scripts/install-deps.sh"
  extras=$(sed -n 's/^# extra-packages:[[:space:]]*//p' "$f")
  # Packages named on apt-get install lines (continuations joined), options dropped.
  pkgs=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$f" | grep -o 'apt-get install[^&;|]*' |
         sed 's/apt-get install//' | tr ' ' '\n' | grep -v '^-' | grep -v '^$' || true)
  for p in $pkgs; do
    if printf '%s\n' "${listed[@]}" | grep -qx "$p"; then
      err "$name installs '$p' itself: it is in install-deps.sh already (drop it here)"
    elif ! tr ' ' '\n' <<<"$extras" | grep -qx "$p"; then
      err "$name installs '$p', which is neither in install-deps.sh --list nor on its '# extra-packages:' line"
    fi
  done
done
grep -q '^FROM debian:12' "$root/docker/Dockerfile.cpu" || err "Dockerfile.cpu must build FROM debian:12 (the target of install-deps.sh)"
grep -q 'cmake --preset cuda' "$root/docker/Dockerfile" || err "Dockerfile must build the cuda preset"
grep -q '"name": "cuda"' "$root/CMakePresets.json" || err "CMakePresets.json has no cuda preset"
((fail == 0)) && echo "check_dockerfiles: docker files agree with install-deps.sh (${#listed[@]} packages)"
exit $fail
