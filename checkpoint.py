"""(being written) every checkpoint format in one place."""
import distributed as D
from model import load_checkpoint


def load_model(path, env=None, dtype=None, dropout=0.0):
    """A checkpoint folder as a model: whole on one process, FSDP-sharded (each
    rank streaming in only its slice) when env has a device mesh."""
    env = env or D.Env()
    if env.fsdp:
        return D.build_model(env, path, dropout=dropout)
    return load_checkpoint(path, device=env.device, dtype=dtype)
