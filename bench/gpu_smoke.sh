#!/usr/bin/env bash
# GPU smoke test of the policy side, offline: a small random-weight Qwen2.5-VL served by vLLM,
# `segresearch run` against it, then two GRPO steps of `segresearch train` (vLLM rollouts,
# FSDP actor) on a synthetic OK-VOS set. Random weights produce random text, so the run is
# checked for reaching the model and ending cleanly, not for an answer; training is checked for
# finishing two steps.
#
#   bash bench/gpu_smoke.sh                 # or: make gpu-smoke
#
# Needs one CUDA GPU and a Python with segresearch[hf,rl,gpu] (vllm, verl, TransferQueue and a
# CUDA torch; README "GPU environment"; PYTHON=..., default .venv/bin/python, else python3).
# flash-attn is optional (sdpa without it). Nothing is downloaded. Environment knobs:
#   SMOKE_DIR (default runs/gpu-smoke, replaced), SMOKE_PORT (8765), SMOKE_FAMILY (qwen2_5_vl),
#   SMOKE_TRAIN=0 to stop after the run, SMOKE_VLLM_ARGS (extra `vllm serve` arguments).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import vllm" 2>/dev/null; then PYTHON=.venv/bin/python
    else PYTHON=python3; fi
fi
WORK=${SMOKE_DIR:-runs/gpu-smoke}
PORT=${SMOKE_PORT:-8765}
FAMILY=${SMOKE_FAMILY:-qwen2_5_vl}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }
fail() { echo "gpu_smoke: FAILED: $*" >&2; exit 1; }

step "checks"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader \
    || fail "nvidia-smi not found: this needs a CUDA GPU"
"$PYTHON" - <<'EOF' || fail "the Python environment is missing a package (see above); install segresearch[hf,rl] and vllm"
import importlib, sys
missing = []
for name in ("segresearch", "vllm", "verl", "torch", "transformers"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:13s}{getattr(mod, '__version__', '')}")
    except Exception as e:  # noqa: BLE001
        missing.append(f"{name}: {e}")
import torch
if not torch.cuda.is_available():
    missing.append("torch: CUDA is not available")
if missing:
    print("\n".join(missing), file=sys.stderr)
    sys.exit(1)
EOF

# verl loads the policy with flash_attention_2 unless told otherwise; flash-attn is a source
# build, so where it does not import with CUDA the smoke trains with sdpa (remove-padding off).
read -r -a ATTN <<<"$("$PYTHON" -c 'from segresearch.rl.environment import attention_overrides; print(" ".join(attention_overrides()))')"
echo "attention    ${ATTN[*]}"
if [ "${SMOKE_TRAIN:-1}" = 1 ]; then
    # What `segresearch train` needs here (rollout engine, TransferQueue, CUDA, version pins,
    # attention), all reported at once before minutes go into starting vLLM.
    "$PYTHON" - "${ATTN[@]}" <<'EOF' || fail "this machine cannot run segresearch train (see above)"
import sys
from segresearch.rl.environment import check_trainer_environment
from segresearch.rl.train import compose_config
problems = check_trainer_environment(compose_config("grpo", ["trainer.n_gpus_per_node=1", *sys.argv[1:]]))
for p in problems:
    print(p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
fi

rm -rf "$WORK"
mkdir -p "$WORK"
MODEL=$ROOT/$WORK/model
DATA=$ROOT/$WORK/okvos

step "tiny random-weight $FAMILY"
"$PYTHON" bench/_gpu_smoke_model.py --out "$MODEL" --family "$FAMILY"

step "synthetic OK-VOS set"
"$PYTHON" -m segresearch data synthetic --out "$DATA" --videos 4
"$PYTHON" -m segresearch data okvos --root "$DATA" --split train

VLLM_PID=""
stop_vllm() {
    if [ -n "$VLLM_PID" ] && kill -0 "$VLLM_PID" 2>/dev/null; then
        kill -INT "$VLLM_PID" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$VLLM_PID" 2>/dev/null || break; sleep 1; done
        kill -9 "$VLLM_PID" 2>/dev/null || true
    fi
    VLLM_PID=""
}
trap stop_vllm EXIT

step "vLLM on 127.0.0.1:$PORT"
# shellcheck disable=SC2086
"$PYTHON" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name tiny \
    --host 127.0.0.1 --port "$PORT" --max-model-len 8192 --gpu-memory-utilization 0.3 \
    --enforce-eager --limit-mm-per-prompt '{"image": 16}' ${SMOKE_VLLM_ARGS:-} \
    >"$WORK/vllm.log" 2>&1 &
VLLM_PID=$!
for i in $(seq 300); do
    if "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; then
        echo "ready after ${i} s"; break
    fi
    kill -0 "$VLLM_PID" 2>/dev/null || { tail -n 40 "$WORK/vllm.log"; fail "vLLM exited while starting"; }
    [ "$i" = 300 ] && { tail -n 40 "$WORK/vllm.log"; fail "vLLM did not become healthy in 300 s"; }
    sleep 1
done

step "segresearch run against vLLM"
FRAMES=$(ls -d "$DATA"/train/JPEGImages/* | head -n 1)
set +e
"$PYTHON" -m segresearch run --model "openai:tiny@http://127.0.0.1:$PORT/v1" --media "$FRAMES" \
    --query "the square that won the 2031 Tessellate Cup" --search local \
    --kb "$ROOT/segresearch/assets/demo_kb" --segmenter grabcut --max-turns 2 --temperature 1.0 \
    --out "$WORK/run" --json >"$WORK/run.json" 2>"$WORK/run.err"
RC=$?
set -e
cat "$WORK/run.err"
[ "$RC" = 0 ] || [ "$RC" = 1 ] || fail "segresearch run exited $RC (0 or 1 expected)"
"$PYTHON" - "$WORK/run.json" <<'EOF' || fail "the run did not reach the model"
import json, sys
lines = [ln for ln in open(sys.argv[1], encoding="utf-8") if ln.strip().startswith("{")]
final = json.loads(lines[-1])
stop, turns = final.get("stop_reason", ""), final.get("turns", 0)
print(f"stop_reason={stop} turns={turns} searches={len(final.get('searches') or [])}")
if turns < 1 or stop.startswith("error"):
    print(final.get("error", ""), file=sys.stderr)
    sys.exit(1)
EOF
stop_vllm

if [ "${SMOKE_TRAIN:-1}" = 1 ]; then
    step "two GRPO steps of segresearch train"
    "$PYTHON" -m segresearch train --preset grpo \
        actor_rollout_ref.model.path="$MODEL" \
        data.train_files="$DATA/verl/train.parquet" data.val_files="$DATA/verl/train.parquet" \
        data.train_batch_size=2 data.max_prompt_length=4096 data.max_response_length=2048 \
        actor_rollout_ref.actor.ppo_mini_batch_size=2 actor_rollout_ref.actor.ppo_max_token_len_per_gpu=6144 \
        actor_rollout_ref.rollout.n=2 actor_rollout_ref.rollout.gpu_memory_utilization=0.3 \
        actor_rollout_ref.rollout.max_num_seqs=64 actor_rollout_ref.rollout.enforce_eager=true \
        trainer.n_gpus_per_node=1 trainer.total_training_steps=2 trainer.save_freq=-1 trainer.test_freq=-1 \
        trainer.val_before_train=false trainer.experiment_name=gpu_smoke \
        trainer.default_local_dir="$ROOT/$WORK/checkpoints" trainer.rollout_data_dir="$ROOT/$WORK/rollouts" \
        "${ATTN[@]}" 2>&1 | tee "$WORK/train.log"
    grep -Eq "step:2( |$|-)" "$WORK/train.log" || fail "training did not log step 2 (see $WORK/train.log)"
    ls "$WORK/rollouts" >/dev/null 2>&1 || fail "no rollout records in $WORK/rollouts"
fi

step "passed"
echo "gpu_smoke: OK (outputs in $WORK)"
