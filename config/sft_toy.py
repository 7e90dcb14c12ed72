# SFT of a toy model from scratch on a laptop CPU, in a few minutes, on the data
# the self-rewarding loop trains M1 on (run python selfreward.py first; it
# writes out/toy/train/ift_eft.jsonl and out/toy/tokenizer.model):
#   python train_sft.py config/sft_toy.py
init_from = "scratch"
model = "toy"
tokenizer = "out/toy/tokenizer.model"
data = "out/toy/train/ift_eft.jsonl"   # IFT seed + EFT targets, shuffled: M1's SFT data
out_dir = "out/toy_sft"
batch_size = 16
micro_batch_size = 8
epochs = 3
lr = 1e-3           # a random init learns far faster than the paper's 5.5e-6 fine-tuning rate
min_lr = 1e-4
warmup_steps = 20
dropout = 0.0
eval_interval = 50
save_interval = 50
