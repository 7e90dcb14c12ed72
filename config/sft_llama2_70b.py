# The paper's SFT (M0 -> M1) on Llama 2 70B, multi-node (see --plan_only=True for the memory):
#   torchrun --nnodes=4 --nproc_per_node=8 --node_rank=$R --master_addr=$HEAD --master_port=29500 \
#       train_sft.py config/sft_llama2_70b.py
init_from = "checkpoints/Llama-2-70b-hf"
data = "data/ift_eft.jsonl"
out_dir = "out/llama2-70b/M1"
batch_size = 16
micro_batch_size = 1
max_seq_len = 2048
lr = 5.5e-6
min_lr = 1.1e-6
dropout = 0.1
activation_checkpointing = True
save_interval = 100
