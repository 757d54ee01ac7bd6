#!/usr/bin/env bash
# Mutation testing of the modules that decide the numbers (mutmut 3.x), one module at a time, each with
# its own fast subset of the tests. Not part of CI (minutes per module); see docs/testing.md.
#
#   pip install "mutmut>=3.8,<4"              # not in the dev extra (pulls in libcst and textual)
#   scripts/mutation.sh                       # every module, each with its own test subset
#   scripts/mutation.sh vicreg ridge          # some modules
#   SUITE=before scripts/mutation.sh ridge    # the code and tests of BEFORE_REF (the suite before the
#                                             # reference tests and gap tests were written)
#   scripts/mutation.sh --list                # the modules, their scope and their tests
#   scripts/mutation.sh --summary [MODULE ...]  # the summaries of the last runs again (after editing
#                                             # scripts/mutation-equivalent.txt)
#
# Each module runs in its own copy of src/ and tests/ under build/mutation/<module>-<suite>/ (mutmut writes
# its mutants/ folder there, the working tree is left alone); results: build/mutation/<module>-<suite>/result.txt
# (one line per mutant: name and status), build/mutation/<module>-<suite>/survivors.txt (each surviving mutant
# and the lines it changed), gaps.txt (the survivors not listed in scripts/mutation-equivalent.txt) and a
# one-line summary with the kill rate, killed / (mutants - no tests - equivalent), on stdout
# (scripts/mutation_summary.py). Modules whose scope is part of a file name the functions they cover: mutmut
# mutates whole files, and the run is restricted to the mutants of those functions by name
# (mutmut run 'shamisa.pkg.module.x_function__mutmut_*').
#
# Environment: PYTHON (default .venv/bin/python), CHILDREN (parallel mutants, default 2), SUITE (after |
# before), NICE (default 19), PYTEST_EXTRA (more pytest arguments for every mutant, e.g. "--device cuda"
# on a GPU machine), BEFORE_REF (the commit SUITE=before takes src/ and tests/ from; default
# f2ea31f, the last commit before the reference tests; a module's test files missing there are left out).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
children=${CHILDREN:-2}
suite=${SUITE:-after}
nice_level=${NICE:-19}
before_ref=${BEFORE_REF:-f2ea31f}

# name | file to mutate (under src/) | mutant-name filters ('' = the whole file) | tests
modules=(
  "aggregate|shamisa/objectives/aggregate.py||tests/objectives"
  "arniqa|shamisa/objectives/arniqa.py||tests/objectives"
  "curves|shamisa/objectives/curves.py||tests/objectives"
  "graphs|shamisa/objectives/graphs.py||tests/objectives"
  "lml|shamisa/objectives/lml.py||tests/objectives tests/finetuning"
  "ntxent|shamisa/objectives/ntxent.py||tests/objectives"
  "objectives-registry|shamisa/objectives/registry.py||tests/objectives"
  "shamisa-objective|shamisa/objectives/shamisa.py||tests/objectives"
  "transport|shamisa/objectives/transport.py||tests/objectives"
  "vicreg|shamisa/objectives/vicreg.py||tests/objectives"
  "levels|shamisa/distortions/levels.py||tests/distortions/test_levels.py tests/distortions/test_reference_levels.py tests/distortions/test_sampler.py"
  "sampler|shamisa/distortions/sampler.py||tests/distortions/test_sampler.py tests/distortions/test_levels.py tests/distortions/test_reference_levels.py"
  "noise-types|shamisa/distortions/functional.py|x_whitenoise x_whitenoiseCC x_impulsenoise x_multnoise x__randn x__rand x__normal_table|tests/distortions/test_functional.py tests/distortions/test_reference_types.py tests/distortions/test_reference_types_random.py tests/distortions/test_kernels.py"
  "colour-types|shamisa/distortions/functional.py|x_colordiff x__colordiff_finish x_colorshift x__edge_weight x__colorshift_finish x__percentile_lower x_colorsat1 x_colorsat2 x__colorsat2_finish|tests/distortions/test_functional.py tests/distortions/test_reference_types.py tests/distortions/test_reference_types_random.py tests/distortions/test_kernels.py"
  "ridge|shamisa/evaluation/ridge.py||tests/evaluation/test_ridge.py tests/evaluation/test_reference_ridge.py tests/evaluation/test_ridge_messages.py"
  "crops|shamisa/images.py|x_resize x_half_scale x_ensure_min_side x_center_corners_crops x_two_scale_crops|tests/test_images.py tests/evaluation/test_reference_crops.py"
  "optimizer|shamisa/training/model.py|x_param_groups x_build_optimizer x_freeze_encoder_lr|tests/training/test_reference_step.py tests/training/test_loop.py"
  "step|shamisa/training/loop.py|x__train_step x__to_device|tests/training/test_reference_step.py tests/training/test_loop.py tests/training/test_distributed.py"
)

field() { cut -d'|' -f"$2" <<<"$1"; }

# summarize NAME WORK [WHEN]: the one-line summary of a finished run, and its gaps.txt
summarize() {
  [[ -f "$2/result.txt" ]] || { echo "$1 ($suite): no run in $2" >&2; return 0; }
  "$py" "$root/scripts/mutation_summary.py" "$2" "$1 ($suite)" ${3:+"$3"}
}


if [[ "${1:-}" == "--list" ]]; then
  for m in "${modules[@]}"; do
    printf '%-20s %-36s %s\n    tests: %s\n' "$(field "$m" 1)" "$(field "$m" 2)" "$(field "$m" 3)" "$(field "$m" 4)"
  done
  exit 0
fi
if [[ "$suite" != after && "$suite" != before ]]; then
  echo "SUITE must be after or before, not $suite" >&2
  exit 2
fi
summary_only=0
if [[ "${1:-}" == "--summary" ]]; then
  summary_only=1
  shift
else
  "$py" -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: pip install 'mutmut>=3.8,<4'" >&2; exit 2; }
  if [[ "$suite" == before ]] && ! git -C "$root" cat-file -e "$before_ref^{commit}" 2>/dev/null; then
    echo "BEFORE_REF $before_ref is not in this clone's history (a shallow clone? git fetch --unshallow)" >&2
    exit 2
  fi
fi
wanted=("$@")
selected=()
for m in "${modules[@]}"; do
  name=$(field "$m" 1)
  if [[ ${#wanted[@]} -eq 0 ]] || printf '%s\n' "${wanted[@]}" | grep -qx "$name"; then
    selected+=("$m")
  fi
done
if [[ ${#selected[@]} -eq 0 ]]; then
  echo "no such module: ${wanted[*]} (see --list)" >&2
  exit 2
fi

for m in "${selected[@]}"; do
  name=$(field "$m" 1)
  work="$root/build/mutation/$name-$suite"
  if [[ $summary_only == 1 ]]; then
    summarize "$name" "$work"
    continue
  fi
  file=$(field "$m" 2)
  filters=$(field "$m" 3)
  tests=()
  for t in $(field "$m" 4); do
    if [[ "$suite" == before ]] && ! git -C "$root" cat-file -e "$before_ref:$t" 2>/dev/null; then
      continue  # written after BEFORE_REF
    fi
    tests+=("$t")
  done
  rm -rf "$work"
  mkdir -p "$work"
  if [[ "$suite" == before ]]; then
    git -C "$root" archive "$before_ref" src tests | tar -x -C "$work"
  else
    cp -r "$root/src" "$root/tests" "$work/"
  fi
  find "$work" -name __pycache__ -prune -exec rm -rf {} +
  # the project's pytest settings, and mutmut's for this module
  if [[ "$suite" == before ]]; then git -C "$root" show "$before_ref:pyproject.toml"; else cat "$root/pyproject.toml"; fi |
    sed -n '/^\[tool.pytest.ini_options\]/,/^\[/p'  | sed '$ { /^\[/d }' >"$work/pyproject.toml"
  {
    echo
    echo "[tool.mutmut]"
    echo "source_paths = [\"src\"]"
    echo "only_mutate = [\"src/$file\"]"
    printf 'pytest_add_cli_args_test_selection = ['
    sep=""
    for t in "${tests[@]}"; do printf '%s"%s"' "$sep" "$t"; sep=", "; done
    echo "]"
    printf 'pytest_add_cli_args = ["-q", "-x", "-p", "no:randomly"'
    for a in ${PYTEST_EXTRA:-}; do printf ', "%s"' "$a"; done
    echo "]"
    echo "process_isolation = \"forkserver\""
    echo "use_git_change_detection = false"
  } >>"$work/pyproject.toml"
  module=${file%.py}
  module=${module//\//.}
  names=()
  for f in $filters; do names+=("$module.${f}__mutmut_*"); done
  echo "== $name ($suite): src/$file ${filters:+[$filters] }with ${tests[*]}" >&2
  start=$(date +%s)
  (
    cd "$work"
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    nice -n "$nice_level" "$py" -m mutmut run --max-children "$children" "${names[@]}" >run.log 2>&1 || true
    nice -n "$nice_level" "$py" -m mutmut results --all true 2>/dev/null | sed 's/^ *//' >results-all.txt || true
  )
  # keep the mutants of this module's scope only
  if [[ ${#names[@]} -eq 0 ]]; then
    grep -E "^$module\.[^ ]*__mutmut_[0-9]+: " "$work/results-all.txt" >"$work/result.txt" || true
  else
    : >"$work/result.txt"
    for f in $filters; do
      grep -E "^$module\.${f}__mutmut_[0-9]+: " "$work/results-all.txt" >>"$work/result.txt" || true
    done
  fi
  # each survivor with its change (the lines mutmut altered), for classifying it
  (
    cd "$work"
    for mutant in $(grep -E ': survived$' result.txt | cut -d: -f1); do
      echo "## $mutant"
      "$py" -m mutmut show "$mutant" 2>/dev/null | grep -E '^[-+][^-+]' || true
    done
  ) >"$work/survivors.txt"
  summarize "$name" "$work" "$(( $(date +%s) - start )) s"
done
