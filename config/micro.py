# The whole loop in about 15 seconds on a tiny model (0.23M parameters), to see
# every stage run and every file a run writes before the 9-minute default:
#   python selfreward.py config/micro.py        -> out/micro/report.md
# Seed data, M0, the SFT baseline, M1, two iterations (prompts, candidates,
# judgments, pairs, DPO), evaluation and report, as the default run, at sizes
# where nothing learned means anything. The tests run the loop with these settings.
run_name = "micro"
model = "toy-tiny"
vocab_size = 1024
n_ift = 48
n_eft_train = 40
n_eft_eval = 12
n_test = 8
pretrain_docs = 64
pretrain_qa_docs = 16
pretrain_epochs = 10  # (8 made a judge that scored too few candidates for a pair in iteration 2)
pretrain_lr = 3e-3
sft_lr = 3e-3
sft_min_lr = 3e-4
sft_epochs = 10
n_prompts = 16
shard_size = 4
max_response_tokens = 12
max_judge_tokens = 40
gen_batch_size = 48
dpo_lr = 5e-4
dpo_min_lr = 1e-4
dpo_batch_size = 4
micro_batch_size = 8
save_interval = 4
rouge_threshold = 0.99
threads = 1         # one a rank under torchrun too
dropout = 0.0       # dropout masks are drawn per rank: 2 ranks match 1 process only without it
dtype = "float32"   # and only in fp32 (FSDP's bf16 casts differ from one process's autocast)
