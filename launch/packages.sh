# Sourced by launch/setup.sh and tests/slurm/cluster.sh: Debian packages are
# checked by package name with dpkg-query, never by a file that some package
# might ship. (A file glob for libclang once matched libclang-cpp14's
# libclang-cpp.so.14, which is not the libclang bindgen loads, so libclang-dev
# was never installed on a fresh machine.)

# missing_packages NAME...: print each NAME that dpkg does not list as
# installed, one a line.
missing_packages() {
  local p status
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "packages.sh: dpkg-query not found (not a Debian-based system): not checking $*; install their equivalents yourself" >&2
    return 0
  fi
  for p in "$@"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    # The second letter is the current state: i = installed (also when held, "hi").
    [[ ${status:1:1} == i ]] || echo "$p"
  done
}

# install_packages WHO NAME...: install NAME... with apt-get when root, else
# say what to install (as WHO) and fail.
install_packages() {
  local who=$1
  shift
  (($#)) || return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "$who: installing $*" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "$who: please install these Debian packages (or run as root): $*" >&2
    return 1
  fi
}
