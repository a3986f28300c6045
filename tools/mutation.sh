#!/usr/bin/env bash
# Mutation score of the core modules with mutmut (https://github.com/boxed/mutmut), against the fast tests.
#
#   tools/mutation.sh                         # the default subset below
#   tools/mutation.sh selflengthen/runfolder/store.py   # any modules (globs like selflengthen/stages/* work too)
#
# It copies the package, tests and configs to a scratch folder (mutmut writes a `mutants/` tree next to the
# code; the checkout stays clean), writes mutmut's config there (setup.cfg [mutmut]), runs every mutant
# against the tests that cover it, and prints the score and the survivors. Slow: each mutant reruns the
# tests that reach it. Run it on a quiet machine, or under `nice -n 19` when the cores are shared.
# Not part of ./run.sh test or .ci/run. Needs mutmut 3.x (installed into the venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
MUTMUT_VERSION=3.8.1
"$PY" -c "import mutmut" 2>/dev/null || "$PY" -m pip install -q "mutmut==$MUTMUT_VERSION"

MODULES=("$@")
[ ${#MODULES[@]} -gt 0 ] || MODULES=(selflengthen/writing/sampling.py selflengthen/writing/filters.py selflengthen/writing/length_control.py
                                     selflengthen/stages/extend.py)
# the fast tests that exercise those modules (unit tests of the pure parts + the stage/wiring tests)
TESTS=(tests/writing/test_sampling.py tests/writing/test_filters.py tests/writing/test_length_control.py tests/stages/test_stages.py
       tests/e2e/test_wiring.py tests/unit/test_mutation_kills.py)

WORK=${MUTATION_DIR:-$(mktemp -d /tmp/selflengthen-mutation.XXXXXX)}
mkdir -p "$WORK"
cp -r selflengthen tests pyproject.toml README.md "$WORK/"
find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
{
  echo "[mutmut]"
  echo "source_paths = selflengthen"
  printf "also_copy =\n    selflengthen/conf\n    selflengthen/data\n    README.md\n"
  printf "only_mutate =\n"; for m in "${MODULES[@]}"; do printf "    %s\n" "$m"; done
  printf "pytest_add_cli_args_test_selection =\n"; for t in "${TESTS[@]}"; do printf "    %s\n" "$t"; done
  echo "pytest_add_cli_args = -p no:cacheprovider -q -x"
} > "$WORK/setup.cfg"
cd "$WORK"
# mutmut reads [tool.mutmut] from pyproject.toml first; the copy has none, so setup.cfg is used
export SELFLENGTHEN_QUIET=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
"$PY" -m mutmut run --max-children "${JOBS:-1}" || true
"$PY" -m mutmut results --all true > results.txt || "$PY" -m mutmut results > results.txt
echo "results in $WORK/results.txt; inspect one with: (cd $WORK && $PY -m mutmut show <name>)"
"$PY" - <<'PY'
import collections, re
counts = collections.Counter()
for line in open("results.txt"):
    m = re.match(r"\s*(\S+): (\w[\w ]*)$", line)
    if m:
        counts[m.group(2).strip()] += 1
killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("segfault", 0)
scored = killed + counts.get("survived", 0)
print(dict(counts))
print(f"mutation score: {killed}/{scored} = {killed / max(1, scored):.0%} (killed or timed out / killed + survived)")
PY
