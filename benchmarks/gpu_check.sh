#!/usr/bin/env bash
# The GPU check, in one call: build the CUDA kernels in place, run every CUDA case of the test
# suite (a skipped one is a failure), run a CUDA test selection under compute-sanitizer, search on
# CUDA from the command line (captured step, and twice with --deterministic: the alphas must have
# the same bits), write the CUDA section of benchmarks/RESULTS.md, and time the step through the
# distributed code path on one GPU (NCCL, world size 1) against the plain step, then search from
# the command line under torchrun, time PC-DARTS and GDAS against their authors' code, and run
# the one-shot family (SPOS and its evolution, random-ws, ENAS, ProxylessNAS with the hardware
# loss) from the command line and its single-path step against the all-candidates one. Sized
# for one large GPU and 16 CPU cores: each stage has its own time limit (580 s in all), a failed
# stage does not stop the others, and --stages reruns only some. Logs and JSON go to the output
# folder (10 files at most); a short table is printed last.
#
#   bash benchmarks/gpu_check.sh [--out DIR]
#        [--stages build,tests,report,sanitizer,cli,distributed,family,oneshot]
#
# DIR defaults to $OUT, else ./gpu_check_out. Run from anywhere; python3 must be the Python whose
# torch has CUDA (override with PYTHON=...).
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
out=${OUT:-gpu_check_out}
stages=build,tests,sanitizer,cli,report,distributed,family,oneshot
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }
           out=$2; shift 2 ;;
    --stages) [ $# -ge 2 ] || { echo "gpu_check.sh: --stages needs a list" >&2; exit 2; }
              stages=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for s in ${stages//,/ }; do
  case "$s" in build|tests|sanitizer|cli|report|distributed|family|oneshot) ;;
    *) echo "gpu_check.sh: unknown stage '$s' (stages: build,tests,sanitizer,cli,report," \
            "distributed,family,oneshot)" >&2
       exit 2 ;;
  esac
done
python=${PYTHON:-python3}
mkdir -p "$out" || { echo "gpu_check.sh: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
log=$out/gpu_check.log
export PYTHONUNBUFFERED=1
declare -A result seconds
order=()

# stage NAME LIMIT_S COMMAND...: runs COMMAND with a time limit, its output appended to the log.
stage() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  order+=("$name")
  echo "== $name (limit ${limit} s)" | tee -a "$log"
  # timeout runs programs, not shell functions: each stage runs in a bash that inherits them.
  timeout --kill-after=10 "$limit" bash -c "$*" >>"$log" 2>&1
  rc=$?
  seconds[$name]=$((SECONDS - start))
  case $rc in
    0) result[$name]=ok ;;
    124|137) result[$name]="timed out" ;;
    *) result[$name]="failed (exit $rc)" ;;
  esac
  echo "   $name: ${result[$name]} in ${seconds[$name]} s" | tee -a "$log"
}
wants() { [[ ",$stages," == *",$1,"* ]]; }

{
  echo "gpu_check $(date -u +%FT%TZ) in $(pwd)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 ||
    echo "nvidia-smi: not available"
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" 2>&1
} | tee "$log"

build() {
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$(nproc) \
    "$python" setup.py -q build_ext --inplace &&
  "$python" -c "import torch, darts_fast; assert torch.cuda.is_available(); \
x = [torch.randn(5, device='cuda') for _ in range(9)]; \
y = darts_fast.kernels.weighted_sum(x, torch.ones(9, device='cuda')); \
assert torch.allclose(y, sum(x)), 'the CUDA weighted sum disagrees with the Python sum'; \
print('CUDA kernels built and running')"
}

# Every CUDA case: the device-parametrized tests' [cuda] cases and the CUDA-only tests (their
# names hold 'cuda'). A CUDA case that skips is a failure here.
cuda_tests() {
  "$python" -m pytest -q -p no:cacheprovider tests -k cuda -rs --benchmark-disable \
    --junitxml=/tmp/gpu_check_tests.xml || return 1
  "$python" - /tmp/gpu_check_tests.xml <<'PY'
import sys
import xml.etree.ElementTree as ET

cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
skipped = [f"{c.get('classname')}.{c.get('name')}" for c in cases if c.find("skipped") is not None]
print(f"{len(skipped)} CUDA cases skipped" + "".join(f"\n  {s}" for s in skipped))
sys.exit(1 if skipped else 0)
PY
}

# compute-sanitizer runs on some runtimes of GPU machines and refuses the device on others: each
# tool's outcome is recorded, with "device not supported" told apart from an error it found.
sanitizer() {
  local selection="tests/test_weighted_sum.py tests/test_multi_tensor.py"
  selection+=" tests/test_batch_norm_weighted_sum.py"
  local tool k
  : >"$out/sanitizer.log"
  for tool in memcheck racecheck synccheck; do
    if [ "$tool" = memcheck ]; then k="cuda and not compile and not opcheck"
    else
      k="cuda and (matches_python_sum or rounded_once or test_norm or revert"
      k+=" or matches_batch_norm or shuffled_output)"
    fi
    compute-sanitizer --tool "$tool" --error-exitcode 99 \
      "$python" -m pytest -q -x -p no:cacheprovider $selection -k "$k" --benchmark-disable \
      >/tmp/sanitizer-$tool.txt 2>&1
    local rc=$?
    { echo "== $tool (exit $rc)"; cat "/tmp/sanitizer-$tool.txt"; } >>"$out/sanitizer.log"
    if grep -q "Device not supported\|not supported on this" "/tmp/sanitizer-$tool.txt"; then
      echo "$tool: not supported on this machine"
    elif [ $rc -eq 0 ]; then
      echo "$tool: no errors ($(grep -o 'ERROR SUMMARY: [0-9]* errors' \
        "/tmp/sanitizer-$tool.txt" | tail -1))"
    else
      echo "$tool: FAILED (exit $rc; see sanitizer.log)"
    fi
  done | tee "$out/sanitizer.txt"
  ! grep -q FAILED "$out/sanitizer.txt"
}

# The command line on CUDA: the captured step (its default there), then twice the same search
# with --deterministic, whose alphas must agree bit for bit; the recurrent search captured and
# eager; the collapse guards (noise and auxiliary skip inside the captured step, the eigenvalue)
# and P-DARTS' three stages.
cli() {
  local runs=/tmp/gpu_check_runs common
  rm -rf "$runs"
  common=(search --epochs 2 --layers 5 --init_channels 16 --batch_size 64 --synthetic_size 1024
          --unrolled --device cuda)
  "$python" -m darts_fast "${common[@]}" --run_dir "$runs/graph" &&
  "$python" -m darts_fast "${common[@]}" --no_cuda_graph --run_dir "$runs/eager" &&
  "$python" -m darts_fast "${common[@]}" --deterministic --run_dir "$runs/det1" &&
  "$python" -m darts_fast "${common[@]}" --deterministic --run_dir "$runs/det2" &&
  "$python" -m darts_fast search --space rnn --epochs 1 --unrolled --device cuda \
    --run_dir "$runs/rnn_graph" &&
  "$python" -m darts_fast search --space rnn --epochs 1 --unrolled --device cuda \
    --no_cuda_graph --run_dir "$runs/rnn_eager" &&
  "$python" -m darts_fast "${common[@]}" --alpha_noise --aux_skip 1 --hessian_eigenvalue \
    --run_dir "$runs/guards" &&
  "$python" -m darts_fast search --method pdarts --epochs 3 --layers 2 --add_layers 1 2 \
    --arch_start_epoch 0 --batch_size 32 --synthetic_size 256 --device cuda \
    --run_dir "$runs/pdarts" || return 1
  "$python" - "$runs" <<'PY' | tee "$out/cli.txt"
import csv
import json
import sys

runs = sys.argv[1]
def alphas(name):
    return json.load(open(f"{runs}/{name}/alphas_epoch_002.json"))
def seconds(name):
    return [float(r["seconds"]) for r in csv.DictReader(open(f"{runs}/{name}/metrics.csv"))]
for name in ("graph", "eager", "det1", "det2"):
    print(f"{name}: seconds per epoch {seconds(name)}")
for name in ("guards", "pdarts"):  # the noise and the skip dropout drawn inside the graph
    rows = list(csv.DictReader(open(f"{runs}/{name}/collapse.csv")))
    print(f"{name}: {rows[-1]}, seconds per epoch {seconds(name)}")
for name in ("rnn_graph", "rnn_eager"):  # captured and eager: the same perplexity, to rounding
    rows = list(csv.DictReader(open(f"{runs}/{name}/metrics.csv")))
    print(f"{name}: valid perplexity {rows[-1]['valid_ppl']}, seconds {rows[-1]['seconds']}")
same = alphas("det1") == alphas("det2")
print(f"--deterministic twice: alphas {'bit-identical' if same else 'DIFFER'}")
sys.exit(0 if same else 1)
PY
}

report() {
  "$python" benchmarks/report.py --device cuda --no-plot --out "$out" &&
  cp benchmarks/RESULTS.md "$out/RESULTS.md"
}

# The distributed code path on one GPU (NCCL, world size 1) against the plain step, both eager;
# then a search from the command line under torchrun on that GPU.
distributed() {
  "$python" benchmarks/distributed_scaling.py --device cuda --worlds 1 --batch 64 --repeats 8 \
    --warmup 3 >"$out/distributed.txt" 2>&1 &&
  cp benchmarks/RESULTS.md "$out/RESULTS.md" &&
  rm -rf /tmp/gpu_check_torchrun &&
  "$python" -m torch.distributed.run --standalone --nproc_per_node 1 -m darts_fast search \
    --epochs 1 --layers 5 --init_channels 16 --batch_size 64 --synthetic_size 512 --unrolled \
    --device cuda --run_dir /tmp/gpu_check_torchrun
}

# PC-DARTS' mixed op and first-order step, GDAS' step, P-DARTS' stage-3 step, the Hessian
# eigenvalue against a search step, and DARTS' recurrent node and captured second-order step
# (target: 4x the authors' step) against their authors' code, once each (every case a fresh
# process); the whole family with more repetitions: --stages family alone.
family() {
  "$python" benchmarks/family.py --device cuda --repeats 1 --rounds 5 \
    --cases pc_mixed_op_stride1 pc_step_first gdas_step pdarts_step eigenvalue rnn_node \
    rnn_step_second \
    >"$out/family.txt" 2>&1 &&
  cp benchmarks/RESULTS.md "$out/RESULTS.md"
}

# The one-shot family on CUDA from the command line (each method's search, SPOS' evolution,
# the hardware loss on a profiled latency table), then its single-path step against the
# all-candidates formulation.
oneshot() {
  local runs=/tmp/gpu_check_oneshot common
  rm -rf "$runs" && mkdir -p "$runs"
  common=(--epochs 1 --layers 5 --init_channels 16 --batch_size 64 --synthetic_size 512
          --device cuda)
  "$python" -m darts_fast search --method spos "${common[@]}" --run_dir "$runs/spos" &&
  "$python" -m darts_fast evolve "$runs/spos" --population 10 --select 3 --mutations 3 \
    --crossovers 3 --generations 2 --recalibration_batches 4 --device cuda \
    --run_dir "$runs/evolve" &&
  "$python" -m darts_fast search --method random-ws "${common[@]}" --eval_samples 50 \
    --run_dir "$runs/random" &&
  "$python" -m darts_fast search --method enas "${common[@]}" --controller_steps 5 \
    --run_dir "$runs/enas" &&
  "$python" -m darts_fast profile --method proxyless --layers 5 --device cuda \
    --out "$runs/latency.json" &&
  "$python" -m darts_fast search --method proxyless "${common[@]}" --arch_start_epoch 0 \
    --cost latency --cost_table "$runs/latency.json" --cost_reference 2 \
    --run_dir "$runs/proxyless" &&
  "$python" benchmarks/one_shot.py --device cuda --repeats 1 >"$out/oneshot.txt" 2>&1 &&
  cp benchmarks/RESULTS.md "$out/RESULTS.md"
}

export -f build cuda_tests sanitizer cli report distributed family oneshot
export out python
# The figures first; the limits add up to 580 s, inside a 10-minute call.
wants build && stage build 100 build
wants tests && stage tests 80 cuda_tests
wants report && stage report 100 report
wants sanitizer && stage sanitizer 50 sanitizer
wants cli && stage cli 80 cli
wants distributed && stage distributed 50 distributed
wants family && stage family 70 family
wants oneshot && stage oneshot 50 oneshot

{
  echo
  echo "stage      result                seconds"
  for name in "${order[@]}"; do
    printf '%-10s %-21s %s\n' "$name" "${result[$name]}" "${seconds[$name]}"
  done
  [ -f "$out/sanitizer.txt" ] && sed 's/^/  sanitizer /' "$out/sanitizer.txt"
  [ -f "$out/cli.txt" ] && tail -1 "$out/cli.txt" | sed 's/^/  cli /'
  [ -f "$out/distributed.txt" ] && grep '^| ' "$out/distributed.txt" | sed 's/^/  /'
  [ -f "$out/family.txt" ] && grep '^| .*: ' "$out/family.txt" | sed 's/^/  /'
  [ -f "$out/oneshot.txt" ] && grep '^| .*: ' "$out/oneshot.txt" | sed 's/^/  /'
  [ -f "$out/report-cuda.md" ] && sed -n '/^Targets/,/^$/p;/^| target/,/^$/p' \
    "$out/report-cuda.md" | head -20
} | tee -a "$log"
for name in "${order[@]}"; do [ "${result[$name]}" = ok ] || exit 1; done
