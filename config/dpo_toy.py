# DPO of the loop's toy M1 on its own first-iteration preference pairs (CPU;
# run python selfreward.py first: it writes out/toy/M1/ and out/toy/iter1/pairs.jsonl):
#   python train_dpo.py config/dpo_toy.py
init_from = "out/toy/M1"
data = "out/toy/iter1/pairs.jsonl"
out_dir = "out/toy_dpo"
batch_size = 16
micro_batch_size = 4
epochs = 1
lr = 1e-5           # the paper's 1e-6 is for 70B; a 1.3M model (toy-small, the loop's default) needs more
min_lr = 1e-6
beta = 0.1
dropout = 0.0
