#!/usr/bin/env bash
# Install what orrery's build and tests need, if missing. Safe to run again.
#   launch/setup.sh                 build tools and OpenMPI (Rust must already be installed)
#   launch/setup.sh --test          also the Python packages the tests use
#   launch/setup.sh --print [--test]
#                                   print what is missing, one a line (Debian
#                                   packages, then `pip:` and the requirements
#                                   file when Python packages are missing), and
#                                   change nothing
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=launch/packages.sh
. "$here/packages.sh"
want_test=0
print_only=0
for arg in "$@"; do
  case $arg in
    --test) want_test=1 ;;
    --print) print_only=1 ;;
    *) echo "setup: unknown option $arg (use --test and/or --print)" >&2; exit 2 ;;
  esac
done

# The Debian packages the build uses, each checked by name.
packages=(
  build-essential # cc, c++ and make for the crates that build C (zstd, ring, mpi-sys)
  pkg-config      # how the mpi crate's build finds OpenMPI
  openmpi-bin     # mpirun, for multi-rank training and its tests
  libopenmpi-dev  # mpicc, OpenMPI's headers and libraries the mpi crate links to
  libclang-dev    # libclang.so, which bindgen (in mpi-sys) loads to read mpi.h;
                  # libclang-cpp14, shipped by some images, is not it
)
requirements="$here/../tests/python/requirements.txt"

mapfile -t missing < <(missing_packages "${packages[@]}")
python_missing=0
if ((want_test)) && ! python3 "$here/../tests/python/have_requirements.py" "$requirements"; then
  python_missing=1
fi

if ((print_only)); then
  ((${#missing[@]})) && printf '%s\n' "${missing[@]}"
  ((python_missing)) && echo "pip: $(realpath "$requirements")"
  exit 0
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) and run again" >&2
  exit 1
fi
install_packages setup "${missing[@]}"
if ((python_missing)); then
  echo "setup: installing the Python packages in $requirements" >&2
  python3 -m pip install -q -r "$requirements"
fi
