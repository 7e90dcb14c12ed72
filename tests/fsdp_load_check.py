"""
Run under torchrun by tests/test_train.py: stream a checkpoint into an FSDP2
model (each rank its slice), check the slices hold exactly what a plain
load_checkpoint gives, then save tensor by tensor in small shard files and
check the saved model equals the original.

    torchrun --standalone --nproc_per_node=2 tests/fsdp_load_check.py CKPT OUT
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import distributed as D  # noqa: E402
from model import load_checkpoint  # noqa: E402

torch.set_num_threads(1)
ckpt, out = sys.argv[1], sys.argv[2]
env = D.setup("cpu")
assert env.world == 2, env
model = D.build_model(env, ckpt)
plain = load_checkpoint(ckpt).state_dict()
for name, p in model.named_parameters():
    local = p.to_local()
    # a real shard: this rank holds about half the rows, never the whole tensor
    assert local.shape[0] == -(-p.shape[0] // 2) or local.shape[0] == p.shape[0] // 2, (name, local.shape)
    start = env.rank * -(-p.shape[0] // 2)
    assert torch.equal(local, plain[name][start:start + local.shape[0]]), name
for name, full in D.full_params(model):
    assert torch.equal(full, plain[name]), name
D.save_model(model, env, out, os.path.join(ckpt, "tokenizer.model"), max_shard_bytes=60_000)
if env.master:
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files and "model-00001-of-" in " ".join(files), files
    again = load_checkpoint(out).state_dict()
    assert all(torch.equal(again[n], plain[n]) for n in plain)
    print("FSDP_LOAD_OK", len(files))
D.teardown(env)
