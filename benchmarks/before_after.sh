#!/usr/bin/env bash
# Before/after: this checkout's benchmarks/speed.py run alternately against the msrasr_arch of commit REV
# (checked out in a temporary worktree) and against this checkout's, twice each, so that both see the
# same machine. SwinIR is BasicSR's in both, so compare the ratio rows.
#
#   bash benchmarks/before_after.sh a164ce0 --sizes 128 --runs 5 --no-memory --models msrasr swinir
set -euo pipefail
rev=${1:?usage: benchmarks/before_after.sh REV [speed.py arguments]}
shift
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/old" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git -C "$root" worktree add -q --detach "$tmp/old" "$rev"
for round in 1 2; do
    echo "== msrasr_arch of $rev (round $round)"
    (cd "$tmp/old" && PYTHONPATH="$tmp/old" python "$root/benchmarks/speed.py" "$@")
    echo "== msrasr_arch of this checkout (round $round)"
    (cd "$root" && PYTHONPATH="$root" python "$root/benchmarks/speed.py" "$@")
done
