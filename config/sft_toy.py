# SFT of the toy model from scratch on a laptop CPU, in a few minutes:
#   python train_sft.py config/sft_toy.py --data=out/toy/sft.jsonl --tokenizer=out/toy/tokenizer.model
init_from = "scratch"
model = "toy"
out_dir = "out/toy/M1"
batch_size = 16
micro_batch_size = 8
epochs = 3
lr = 1e-3           # a random init learns far faster than the paper's 5.5e-6 fine-tuning rate
min_lr = 1e-4
warmup_steps = 20
dropout = 0.0
eval_interval = 50
save_interval = 50
