# Sourced by scripts/demo and scripts/test: create .venv and install safe-mcp with the extras in $1.
# The installer's output goes to .venv/install.log and is shown only when it fails.
install_venv() {
  local extras=$1
  local py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv || { echo "could not create .venv with $py (Python 3.11+ with venv is needed)" >&2; return 1; }
  fi
  echo "installing safe-mcp${extras:+[$extras]} into .venv (log: .venv/install.log)" >&2
  if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ".${extras:+[$extras]}"; } \
      >.venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    echo "install failed; the whole log is in .venv/install.log" >&2
    return 1
  fi
}
