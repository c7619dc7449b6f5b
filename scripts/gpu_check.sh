#!/usr/bin/env bash
# The GPU lane: everything a GPU machine should prove, in one command, written under one folder.
#
#   scripts/gpu_check.sh [--out DIR] [--steps LIST]     # on a machine with one CUDA GPU
#   scripts/gpu_check.sh --cpu-smoke [--out DIR]        # the same steps on CPU, small (CI)
#
# Steps, in order (--steps picks some, comma-separated):
#   cpu_suite  the whole test suite with CUDA hidden (CUDA_VISIBLE_DEVICES=""), but for the test
#              that runs this script; --cpu-smoke: a few named test files
#   gpu_tests  the tests marked `gpu` (they skip without CUDA)
#   train      jobs/train.py, demo preset (configs/demo.yaml), one worker on the GPU
#   segment    jobs/segment.py with the trained model (models:/unet@champion) on generated images
#   evaluate   jobs/evaluate.py with that model on a generated labelled set
#   export     jobs/export.py, the model as ONNX, checked against PyTorch
#   benchmark  benchmarks/gpu_benchmark.py (--cpu-smoke: its --smoke-cpu)
#
# Under DIR (default: a new folder under $TMPDIR): one folder per step with its log (stdout and
# stderr) and summary.json (the job's JSON summary; for pytest steps the counts of its JUnit
# report), the MLflow store (mlflow.db, artifacts in work/mlruns/), and summary.json listing
# every step's exit code, seconds and folder. A step that fails does not stop the others (those
# that need the trained model fail with it); the script exits 1 when any step failed.
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
ALL_STEPS="cpu_suite,gpu_tests,train,segment,evaluate,export,benchmark"
SMOKE_SUITE=(
  tests/unit/common/test_cluster_rules.py
  tests/unit/test_gpu_benchmark.py
  tests/unit/core/test_predict_gpu_paths.py
)

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

out="" smoke=0 steps="$ALL_STEPS"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --cpu-smoke) smoke=1; shift ;;
    --steps) steps="${2:?--steps needs a list, e.g. train,segment}"; shift 2 ;;
    --steps=*) steps="${1#--steps=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for step in ${steps//,/ }; do
  case ",$ALL_STEPS," in
    *",$step,"*) ;;
    *) echo "gpu_check.sh: unknown step '$step' in --steps; steps: $ALL_STEPS" >&2; exit 2 ;;
  esac
done
if [ ! -x "$PY" ]; then
  echo "gpu_check.sh: no Python at $PY: create the venv (bash .ci/run) or set PYTHON" >&2
  exit 2
fi
if [ -z "$out" ]; then
  out="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
fi
mkdir -p "$out" && out="$(cd "$out" && pwd)"
if [ "$smoke" = 1 ]; then
  mode="cpu-smoke" device="cpu"
else
  mode="gpu" device="gpu"
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: torch sees no CUDA device here: run it on a GPU machine, or pass" \
      "--cpu-smoke to check the script on CPU" >&2
    exit 2
  fi
fi

# The jobs run in a work folder under DIR: MLflow's sqlite store keeps its artifacts in
# ./mlruns, and Ray Train's results go to --storage-path.
work="$out/work"
mkdir -p "$work"
tracking="sqlite:///$out/mlflow.db"
model="models:/unet@champion"
records="$out/steps.jsonl"
: >"$records"
failed=0

want() { case ",$steps," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# run_step NAME SUMMARY_KIND CWD CMD...: run CMD in CWD (output to NAME/log) and record its exit
# code, seconds and folder; SUMMARY_KIND: job (last stdout line is JSON), junit (NAME/junit.xml),
# file (the command writes NAME/summary.json itself).
run_step() {
  local name="$1" kind="$2" cwd="$3"; shift 3
  local dir="$out/$name"
  mkdir -p "$dir"
  echo "== $name: $*" >&2
  local start end code
  start="$(date +%s.%N)"
  (cd "$cwd" && "$@") >"$dir/stdout" 2>"$dir/log"
  code=$?
  end="$(date +%s.%N)"
  cat "$dir/stdout" >>"$dir/log"
  "$PY" - "$name" "$kind" "$dir" "$code" "$start" "$end" "$records" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

name, kind, folder, code, start, end, records = sys.argv[1:]
folder = Path(folder)
summary = folder / "summary.json"
if kind == "job":
    lines = [line for line in (folder / "stdout").read_text().splitlines() if line.strip()]
    try:
        summary.write_text(json.dumps(json.loads(lines[-1]), indent=1) + "\n")
    except (IndexError, json.JSONDecodeError):
        pass
elif kind == "junit" and (folder / "junit.xml").is_file():
    suites = ET.parse(folder / "junit.xml").getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites)
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    summary.write_text(json.dumps({**counts, "junit": str(folder / "junit.xml")}, indent=1) + "\n")
record = {
    "name": name,
    "exit_code": int(code),
    "seconds": round(float(end) - float(start), 1),
    "output": str(folder),
    "log": str(folder / "log"),
    "summary": str(summary) if summary.is_file() else None,
}
with open(records, "a") as f:
    f.write(json.dumps(record) + "\n")
PY
  echo "== $name: exit $code" >&2
  [ "$code" -eq 0 ] || failed=1
}

pytest_cmd=("$PY" -m pytest -p no:cacheprovider -q)

if want cpu_suite; then
  if [ "$smoke" = 1 ]; then
    suite=("${SMOKE_SUITE[@]/#/$REPO/}")
  else
    # The suite without this script's own test: the steps below are that test, for real.
    suite=("$REPO/tests" --ignore "$REPO/tests/integration/test_gpu_check_script.py")
  fi
  run_step cpu_suite junit "$REPO" env CUDA_VISIBLE_DEVICES= \
    "${pytest_cmd[@]}" --junitxml "$out/cpu_suite/junit.xml" "${suite[@]}"
fi
if want gpu_tests; then
  run_step gpu_tests junit "$REPO" "${pytest_cmd[@]}" -m gpu --junitxml "$out/gpu_tests/junit.xml" \
    "$REPO/tests"
fi

# Data for segment and evaluate: generated, in the shapes of the demo set (64 px, 3 classes).
images=48 epochs=()
if [ "$smoke" = 1 ]; then images=6 epochs=(--epochs 1); fi
if want segment || want evaluate; then
  "$PY" -c '
import sys
from unet_core.synthetic import make_synthetic_dataset
root, n = sys.argv[1], int(sys.argv[2])
make_synthetic_dataset(root + "/unlabelled", num_images=n, size=96, seed=123)
make_synthetic_dataset(root + "/labelled", num_images=n, size=64, seed=7)
' "$out/data" "$images" || failed=1
fi

common=(--config "$REPO/configs/demo.yaml" --tracking-uri "$tracking")
if want train; then
  # No --data: the training job generates its demo set; one worker on the one GPU.
  run_step train job "$work" "$PY" "$REPO/jobs/train.py" "${common[@]}" --device "$device" \
    --num-workers 1 --run-name "gpu-check-$mode" --force-alias \
    --storage-path "$out/train/runs" "${epochs[@]}"
fi
if want segment; then
  run_step segment job "$work" "$PY" "$REPO/jobs/segment.py" "${common[@]}" --device "$device" \
    --model "$model" --input "$out/data/unlabelled/images" --output "$out/segment/masks" \
    --overwrite
fi
if want evaluate; then
  run_step evaluate job "$work" "$PY" "$REPO/jobs/evaluate.py" "${common[@]}" --device "$device" \
    --model "$model" --data "$out/data/labelled" --scores-file "$out/evaluate/scores.parquet"
fi
if want export; then
  run_step export job "$work" "$PY" "$REPO/jobs/export.py" --tracking-uri "$tracking" \
    --model "$model" --format onnx --output "$out/export/unet.onnx"
fi
if want benchmark; then
  bench=("$PY" "$REPO/benchmarks/gpu_benchmark.py" --out "$out/benchmark/summary.json"
    --workdir "$out/benchmark/work")
  [ "$smoke" = 1 ] && bench+=(--smoke-cpu)
  run_step benchmark file "$work" "${bench[@]}"
fi

"$PY" - "$out" "$mode" "$records" "$failed" <<'PY'
import json, sys
from pathlib import Path

out, mode, records, failed = sys.argv[1:]
steps = [json.loads(line) for line in Path(records).read_text().splitlines() if line.strip()]
summary = {
    "mode": mode,
    "out": out,
    "ok": failed == "0" and all(s["exit_code"] == 0 for s in steps),
    "seconds": round(sum(s["seconds"] for s in steps), 1),
    "mlflow": f"sqlite:///{out}/mlflow.db",
    "steps": steps,
}
Path(out, "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary))
PY
exit "$failed"
