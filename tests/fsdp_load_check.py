"""
Run under torchrun: stream a checkpoint into an FSDP2 model (each rank its
slice), check the slices hold exactly what a plain load_model gives, then
save tensor by tensor in small shard files and check the saved model equals
the original. Run by tests/test_train.py (the toy checkpoint, with its
tokenizer.model, copied into the save) and tests/test_model.py (a vocabulary
of odd size and no tokenizer: the two ranks' embedding shards are uneven).

    torchrun --standalone --nproc_per_node=2 tests/fsdp_load_check.py CKPT OUT
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import distributed as D  # noqa: E402
from checkpoint import load_model, save_model  # noqa: E402

torch.set_num_threads(1)
ckpt, out = sys.argv[1], sys.argv[2]
env = D.setup("cpu", threads=1)
assert env.world == 2, env
model = load_model(ckpt, env)
plain = load_model(ckpt).state_dict()
for name, p in model.named_parameters():
    local = p.to_local()
    # a real shard: this rank holds about half the rows, never the whole tensor
    assert local.shape[0] == -(-p.shape[0] // 2) or local.shape[0] == p.shape[0] // 2, (name, local.shape)
    start = env.rank * -(-p.shape[0] // 2)
    assert torch.equal(local, plain[name][start:start + local.shape[0]]), name
for name, p in model.named_parameters():
    assert torch.equal(D.full_tensor(p), plain[name]), name
tokenizer = os.path.join(ckpt, "tokenizer.model")
save_model(model, out, tokenizer if os.path.exists(tokenizer) else None, max_shard_bytes=60_000)
if D.is_rank0():
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files and "model-00001-of-" in " ".join(files), files
    again = load_model(out).state_dict()
    assert all(torch.equal(again[n], plain[n]) for n in plain)
    print("FSDP_LOAD_OK", len(files))
D.teardown(env)
