#!/usr/bin/env bash
# The two set-up commands of the README:
#   ./run.sh demo   create/reuse .venv, install, run the whole pipeline on the embedded default corpus
#   ./run.sh test   create/reuse .venv, install with the test extra, run the default (lean) test suite
# Extra arguments after `test` go to pytest (e.g. ./run.sh test -m slow).
set -euo pipefail
cd "$(dirname "$0")"

mode=${1:-}
case "$mode" in
  demo) extra="" ;;
  test) extra="[test]" ;;
  *) echo "usage: ./run.sh demo | test [pytest args]" >&2; exit 2 ;;
esac
shift

venv=${SCRATCHLLM_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"

# Install only when pyproject.toml (or the mode) changed since the last install.
stamp="$venv/.scratchllm-installed-$mode"
want="$(sha256sum pyproject.toml | cut -c1-64)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip_install() {  # quiet, minus this machine's harmless notes about absent local index folders
    "$py" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v '^WARNING: Location .* is ignored' || true; }
    return "${PIPESTATUS[0]}"
  }
  # Pin torch first: the CPU wheel. An unpinned torch would pull several GB of CUDA packages.
  pip_install "torch==2.13.0"
  pip_install -e ".$extra"
  echo "$want" > "$stamp"
fi

if [ "$mode" = test ]; then
  exec "$py" -m pytest "$@"
fi
# The main job: the whole pipeline on the embedded default corpus (extra arguments are config
# overrides, e.g. ./run.sh demo pretrain.train.max_steps=200). A rerun continues where it stopped.
exec "$venv/bin/scratchllm" pipeline --config configs/pipeline/cpu-demo.toml "$@"
