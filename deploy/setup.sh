#!/usr/bin/env bash
# Set up blockwise on a fresh machine: a virtual environment in .venv with the
# pinned dependencies and an editable build of the Cython kernels.
#   bash deploy/setup.sh          runtime + development tools
#   bash deploy/setup.sh --test   also the system packages the test suite needs
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
export PATH="$PWD/.venv/bin:$PATH"
# every version comes from deploy/constraints.txt (exact pins, each with its reason);
# torch 2.13.0 there is the CPU wheel: an unpinned torch would pull a CUDA build.
# The build backend runs without isolation (the editable build rebuilds on import,
# so its tools must live in the venv).
pip install -q --disable-pip-version-check -c deploy/constraints.txt meson-python meson ninja Cython numpy wheel
pip install -q --disable-pip-version-check -c deploy/constraints.txt --no-build-isolation -e ".[test,dev]"
if [ "${1:-}" = "--test" ]; then
  # waterz compiles its exact QuantileAffinity at first use against boost
  if [ ! -e /usr/include/boost/multi_array.hpp ] && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libboost-dev >/dev/null) \
      || echo "setup: could not install libboost-dev; waterz's exact-quantile reference tests will fail" >&2
  fi
  # the viewer and report tests render pages in a real headless Chromium (Debian's package)
  if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
      || echo "setup: could not install chromium; the viewer and report page tests will fail" >&2
  fi
fi
python -c "import blockwise.kernels._region_merging" >/dev/null
# bytecode now, as a wheel install does: an editable install leaves it to the first
# import, which does not write it where PYTHONDONTWRITEBYTECODE is set, and every
# process of a run (driver, fork server, one per worker slot) then compiles
# blockwise from source again (about 0.1 s each, measured on this 2-core machine)
if ! python -m compileall -q -j 0 blockwise workers >/dev/null 2>&1; then
  # a read-only tree, or a file that does not compile: runs still work (each
  # process compiles what it imports); a syntax error is reported by that import
  echo "setup: could not compile blockwise's bytecode in place; runs start slower" >&2
fi
echo "setup: ready (.venv)"
