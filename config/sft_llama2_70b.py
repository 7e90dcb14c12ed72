# The paper's SFT (M0 -> M1) on Llama 2 70B, as the loop runs it (all of the data,
# rows of Llama 2's 4096 tokens), on 2 nodes of 8 GPUs of 141 GB (H200; the plan:
# 79.7 GiB a GPU at world size 16: python train_sft.py config/sft_llama2_70b.py --plan_only=True
# --world_size=16 --gpu_memory_gb=141):
#   torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$R --master_addr=$HEAD --master_port=29500 \
#       train_sft.py config/sft_llama2_70b.py
# 80 GB GPUs need at least 22 (3 nodes), and a batch of 16 splits over at most 16
# ranks: 4 nodes with --batch_size=32.
init_from = "checkpoints/Llama-2-70b-hf"
model = "llama2-70b"  # its shape, for --plan_only before init_from is downloaded
# M1's data as the loop's M1 stage writes it (before it trains): out/llama2-70b-oasst/train/ift_eft.jsonl
# (the IFT examples and the EFT targets, {"prompt", "response"} each); copy it here, or set data to it
data = "data/ift_eft.jsonl"
out_dir = "out/llama2-70b/M1"
batch_size = 16
micro_batch_size = 1
max_seq_len = 4096
eval_fraction = 0.0        # the paper trains on all of it (no held-out share)
lr = 5.5e-6
min_lr = 1.1e-6
dropout = 0.1
activation_checkpointing = True
save_interval = 100
