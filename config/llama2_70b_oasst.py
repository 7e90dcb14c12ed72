# The paper's run: Llama 2 70B, Open Assistant seed data, two self-rewarding
# iterations (Yuan et al. 2024, Section 3). Prepare the seed data first:
#   python -m data.prepare_oasst oasst1-train.jsonl oasst1-validation.jsonl \
#       --eval_files=oasst1-validation.jsonl --out=data/oasst
# (at its default --ift_frac=0.6 about 2,100 IFT examples, not the paper's 3,200: README, "Open Assistant")
# Check both memory plans (training: FSDP2 over all GPUs; generation: tensor
# parallel over each node's 8 GPUs), then launch on 2 nodes of 8 GPUs of 141 GB
# (H200: training 79.7 GiB a GPU, generation 42.4 GiB at batch 64), R = 0, 1:
#   python selfreward.py config/llama2_70b_oasst.py --plan_only=True --world_size=16 --gpu_memory_gb=141
#   torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$R --master_addr=$HEAD --master_port=29500 \
#       selfreward.py config/llama2_70b_oasst.py
# On 80 GB GPUs training needs at least 22 (3 nodes), and a batch of 16 splits
# over at most 16 ranks: 4 nodes with --sft_batch_size=32 --dpo_batch_size=32.
run_name = "llama2-70b-oasst"
seed_data = "data/oasst"                  # ift.jsonl, eft_train.jsonl (groups), eft_eval.jsonl
init_from = "checkpoints/Llama-2-70b-hf"  # M0: Hugging Face layout (or Meta's params.json + consolidated.NN.pth)
model = "llama2-70b"                      # its shape, for --plan_only before init_from is downloaded
# SFT (Section 3.1, training details): lr 5.5e-6 cosine to 1.1e-6, batch 16, dropout 0.1
sft_lr = 5.5e-6
sft_min_lr = 1.1e-6
sft_batch_size = 16
sft_epochs = 1
micro_batch_size = 1
dropout = 0.1
activation_checkpointing = True
# self-instruction creation (Section 2.2; its settings from 3.1): 8-shot prompts at T 0.6 / top-p 0.9 in
# Self-Instruct's template, kept through its filters (ROUGE-L, keywords, length),
# N = 4 candidates at T 0.7 / top-p 0.9, each judged 3 times
iterations = 2
n_prompts = 30000          # requests per iteration; the paper ended with 3,964 and 6,942 pairs
prompt_writer = "M1"       # the paper used a fixed writer (Llama 2-Chat 70B); any checkpoint folder works
rouge_threshold = 0.7      # Self-Instruct's near-duplicate threshold (its tokens differ: selfreward.words)
max_prompt_tokens = 256
min_prompt_words = 4       # Self-Instruct's length filter, which the paper applies: more than 3 words,
max_prompt_words = 150     # at most 150
n_candidates = 4
temperature = 0.7
top_p = 0.9
max_response_tokens = 1024
n_judge = 3
max_judge_tokens = 256
# DPO (Section 3.1, training details): lr 1e-6 to 1e-7, batch 16, beta 0.1. The paper also kept a checkpoint
# every 200 steps and chose one by comparing their generations on 253 validation prompts: not done here
# (it needs an external judge; each iteration keeps its last step; README: where this differs from the paper)
dpo_lr = 1e-6
dpo_min_lr = 1e-7
dpo_beta = 0.1
dpo_batch_size = 16
save_interval = 200        # steps between resumable training states (removed once the stage ends)
# evaluation: reward-model metrics on the EFT eval set, plus answers for external judges
eval_prompts = "data/alpaca_eval.jsonl"   # {"instruction"} per line (AlpacaEval 805 prompts)
mt_bench = "data/mt_bench/question.jsonl"
gen_batch_size = 64        # the generation plan (tp 8, rows of 4096 tokens): at most 114 fit 80 GB, 232 fit 141 GB
tp = 8                     # generation: each node's 8 GPUs one tensor-parallel group, the nodes split the prompts
shard_size = 512
