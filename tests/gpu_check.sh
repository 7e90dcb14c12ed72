#!/usr/bin/env bash
# The GPU checks of issue 12 as one command, for a machine with one CUDA GPU
# (at most 585 s on an H100/H200: the parts' own time limits, 510 s, and 15 s
# each to kill a part that overruns; about 6 minutes expected by a review of
# its sizes; the part likeliest to run long last):
#   bash tests/gpu_check.sh [OUT_DIR]
# (the device tool brings back at most 8 files from $OUT: the five logs, gpu.txt
# and the toy loop's report.md; the run folders stay in /tmp)
# 1. tests/gpu_check.py under torchrun --nproc_per_node=1: FSDP2 bf16 mixed
#    precision generates (the KV cache dtype crash), host syncs per decode
#    step, the KV cache's peak when rows are copied and dropped
# 2. the loop's micro config under torchrun --nproc_per_node=1 (generation in
#    bf16 weights, training FSDP2 bf16), then a short toy loop on one process
# 3. python bench.py train with the llama-1b preset in bf16 alone: MFU (goal: 40%)
# 4. python bench.py gpu7b: batch-1 decode of a 7B-shaped bf16 model against
#    the memory-bandwidth bound (goal: at least 75%; eager first, then compiled:
#    compiling 32 layers took 2 min of Python on a CPU, so it has the most time)
# Results are printed and written to OUT_DIR (default: $OUT, else out/gpu_check).
# The exit status says whether every part ran and gpu_check.py's checks passed;
# the two benchmarks' goals are read from their printed percentages.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-out/gpu_check}}"
mkdir -p "$OUT_DIR"
RUNS=/tmp/gpu_check_runs  # the run folders: many files, kept out of OUT_DIR; made afresh (a rerun on a
rm -rf "$RUNS"            # warm machine would otherwise find every stage done and check nothing)
PY=${PYTHON:-python3}
# (--local-addr: the workers meet at 127.0.0.1, not at the host's name, which a machine without a network
# may not resolve)
TORCHRUN="$PY -m torch.distributed.run --local-addr=127.0.0.1"
export PYTHONUNBUFFERED=1  # a part stopped by its time limit keeps what it printed
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
date -u | tee -a "$OUT_DIR/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__); \
assert torch.cuda.is_available(), 'no CUDA device'" 2>&1 | tee -a "$OUT_DIR/gpu.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1  # (the python's status, not tee's)
status=0
run() {  # name, seconds, command...
    local name=$1 limit=$2; shift 2
    echo "=== $name"
    local t0=$SECONDS
    timeout -k 15 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1  # (-k: torchrun may wait 30 s on a hung worker)
    local rc=$?
    tail -n 15 "$OUT_DIR/$name.log"
    # a failed torchrun's tail is its own summary: the workers' errors, from further up
    [ $rc -eq 0 ] || grep -m 3 -A 3 "Error" "$OUT_DIR/$name.log"
    echo "=== $name: exit $rc, $((SECONDS - t0)) s"
    [ $rc -eq 0 ] || status=1
}
# time limits: 510 s in all, 585 with the kills' 15 s, under the device tool's 600 s a command
run checks 60 $TORCHRUN --standalone --nproc_per_node=1 tests/gpu_check.py
# the micro config itself (a copy of its settings here fell behind it once), in the GPU's dtype (bf16): generation
# in bf16 weights, training FSDP2 with bf16 mixed precision; 64 prompts, not 16, since a judge scores differently
# in bf16 (on a CPU, in this layout: 2 and 4 pairs with 16, 11 and 9 with 64; no pair stops the loop)
run loop_torchrun 90 $TORCHRUN --standalone --nproc_per_node=1 selfreward.py config/micro.py --dtype=auto \
    --n_prompts=64 --progress=False --out_root="$RUNS" --run_name=micro_torchrun
run toy_loop 100 $PY selfreward.py --out_root="$RUNS" --run_name=toy_short --n_ift=800 --n_eft_train=1200 \
    --pretrain_docs=500 --pretrain_qa_docs=1000 --pretrain_epochs=1 --sft_epochs=1 --n_prompts=200 --iterations=1 \
    --n_test=128 --n_eft_eval=200 --gen_batch_size=256 --progress=False
cp "$RUNS/toy_short/report.md" "$OUT_DIR/toy_short_report.md" 2>/dev/null
# bf16 alone: two 1.1B models (ours and transformers'), fp32 master weights and AdamW state (12 bytes a
# parameter, kept) and one model's gradients at a time: about 35 GB with batch 2 x 2048's bf16
# activations, by arithmetic (fp32 runs too would add two more models and their time)
run train_llama1b 90 $PY bench.py train --bf16=only --train_models=llama-1b --train_batch_size=2 --train_seq_len=2048 --train_steps=3 --train_rounds=2
run gpu7b 170 $PY bench.py gpu7b  # (its compiling, the first compiled call, is never timed)
exit $status
