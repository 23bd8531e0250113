#!/usr/bin/env bash
# Install, then run the test suite twice: as this CPU runs it, then the tests that assert
# bit-for-bit equality (`-m exactness`) again as an AVX2-only CPU on one thread would (oneDNN's
# and ATen's AVX2 kernels round otherwise than AVX-512 ones: a guarantee must hold on both).
# pytest's exit code 5 ("no tests collected") is a failure of the first run: a suite that runs
# nothing must not look green. Arguments go to both runs (e.g. a test file).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
python3 -m pytest -q "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
[ "$rc" -eq 0 ] || exit "$rc"
echo "== the exactness tests again as an AVX2-only CPU on one thread =="
# Inductor's kernel cache is keyed without the ISA this emulation picks: a separate cache keeps
# the first run's AVX-512 kernels out of this one.
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1 \
  TORCHINDUCTOR_CACHE_DIR="${TMPDIR:-/tmp}/metazoo-inductor-avx2" \
  python3 -m pytest -q -p no:cacheprovider -m exactness "$@"
rc=$?
[ "$rc" -eq 5 ] && rc=0  # the arguments selected no exactness test
exit "$rc"
