#!/bin/bash
# The engine's batch lookups fetch their table entries ahead (engine.cc
# LookUpLocked: the series index and the cell tables, through absl's
# raw_hash_set::prefetch). GCC 12 deletes those calls in release builds
# unless engine.cc is built with -fno-ipa-modref (collector/CMakeLists.txt):
# this reads the collector library's object code and fails when
# LookUpLocked holds fewer prefetches than its fetches ahead need.
#   prefetch_kept_test.sh OBJDUMP LIBRARY
set -euo pipefail
objdump=$1 library=$2
# Four for the series index (two call sites, the control bytes and the
# slot each), at least one table's two for the cells.
want=6
found=$("$objdump" -d --no-show-raw-insn -C "$library" | awk '
  /^[0-9a-f]+ <.*>:$/ { inside = index($0, "<constance::collector::Engine::LookUpLocked(") > 0 }
  inside && /prefetcht0/ { n++ }
  END { print n + 0 }')
if (( found < want )); then
  echo "LookUpLocked holds $found prefetcht0 instructions, fewer than $want: the compiler" \
       "deleted the fetches ahead (see collector/CMakeLists.txt, -fno-ipa-modref)" >&2
  exit 1
fi
echo "LookUpLocked holds $found prefetcht0 instructions (at least $want wanted)"
