# DPO of the toy model on its own preference pairs (CPU):
#   python train_dpo.py config/dpo_toy.py --data=out/toy/iter1/pairs.jsonl
init_from = "out/toy/M1/model"
out_dir = "out/toy/M2"
batch_size = 16
micro_batch_size = 4
epochs = 1
lr = 1e-5           # the paper's 1e-6 is for 70B; a 5M model needs more
min_lr = 1e-6
beta = 0.1
dropout = 0.0
