"""
The tokenizer: a thin wrapper over SentencePiece, the one chat template the
whole project uses, and a trainer for the toy world's small tokenizer.

Llama 2 uses a SentencePiece BPE model with byte fallback (unk=0, bos=1,
eos=2, no pad token). The toy tokenizer trained here follows the same
conventions, so every other script treats the two the same way.
"""
import os
import tempfile

import sentencepiece as spm


class Tokenizer:
    def __init__(self, model_path):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"tokenizer model not found: {model_path}")
        self.model_path = model_path
        self.sp = spm.SentencePieceProcessor(model_file=model_path)
        self.vocab_size = self.sp.vocab_size()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id()  # -1 for Llama 2: there is no pad token

    def encode(self, text, bos=False, eos=False):
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids):
        return self.sp.decode(list(ids))


# -----------------------------------------------------------------------------
# The chat template: Llama 2's single-turn form
#     <s>[INST] {prompt} [/INST] {response}</s>
# Prompt and response are encoded separately, so the boundary between them is
# exact: the response tokens are the same whether or not the prompt is there,
# which is what sampling sees (it generates after "[/INST]") and what the SFT
# and DPO losses need (they score only the response tokens).

B_INST, E_INST = "[INST]", "[/INST]"


def chat_prompt_ids(tokenizer, prompt):
    """Token ids of a chat prompt, ready for the model to write the response.
    prompt: a string (one user turn), or a conversation: a list of messages
    {"role": "user" | "assistant", "content": str}, alternating, starting and
    ending with the user. Earlier turns are written as Meta's Llama 2 chat does,
    each exchange its own <s>[INST] {user} [/INST] {assistant} </s>."""
    if isinstance(prompt, str):
        return tokenizer.encode(f"{B_INST} {prompt.strip()} {E_INST}", bos=True)
    roles = [m["role"] for m in prompt]
    if not roles or roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise ValueError(f"a conversation alternates user and assistant turns, starting and ending with "
                         f"the user; got roles {roles}")
    ids = []
    for user, assistant in zip(prompt[0:-1:2], prompt[1::2]):
        ids += tokenizer.encode(f"{B_INST} {user['content'].strip()} {E_INST} {assistant['content'].strip()} ",
                                bos=True, eos=True)
    return ids + chat_prompt_ids(tokenizer, prompt[-1]["content"])


def chat_tokens(tokenizer, prompt, response=None):
    """
    Turn a prompt (and optionally its response) into token ids.
    Returns (ids, response_start): ids[response_start:] are the response
    tokens followed by EOS; without a response, response_start == len(ids)
    and ids is exactly what the model is given to sample from.
    """
    ids = chat_prompt_ids(tokenizer, prompt)
    response_start = len(ids)
    if response is not None:
        # SentencePiece adds its dummy-prefix space, giving "[/INST] {response}"
        ids = ids + tokenizer.encode(response.strip(), eos=True)
    return ids, response_start


# -----------------------------------------------------------------------------
# A small tokenizer for the toy world, trained in seconds.

def train_tokenizer(texts, model_path, vocab_size=512, phrases=False, symbols=()):
    """
    Train a SentencePiece BPE tokenizer on an iterable of strings and write it
    to model_path. Lossless: byte fallback covers any character the pieces miss,
    and whitespace (runs of spaces, newlines) is kept as written. vocab_size
    is an upper bound (the 256 byte pieces count towards it); the model's
    vocab_size must be set from the returned tokenizer's.
    phrases=True lets a piece span several words (up to 64 characters): text
    that recurs verbatim, like the judge rubric in every EFT example, then
    costs a few pieces instead of one or more per word.
    symbols: strings that are always one piece each (the fixed lines of the
    judge rubric, say); a symbol may hold spaces but no newline.
    """
    if any("\n" in x for x in symbols):
        raise ValueError("a tokenizer symbol cannot hold a newline (the newline is a piece of its own)")
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    # train into a temporary folder beside the target, then move the model in
    # place in one step, so a half-written tokenizer is never left behind
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(model_path))) as tmp:
        prefix = os.path.join(tmp, "tok")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=prefix,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,       # a small corpus may support fewer pieces
            character_coverage=1.0,
            byte_fallback=True,           # unknown characters become <0xNN> bytes
            split_digits=True,            # every digit its own piece, as in Llama
            normalization_rule_name="identity",  # no NFKC: text comes back as written
            remove_extra_whitespaces=False,      # keep runs of spaces and newlines
            add_dummy_prefix=True,        # as Llama 2 does
            allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # Llama 2's special ids
            # the chat markers, and the newline kept a piece of its own (as
            # Llama's <0x0A>), so "end of line" can stop generation
            # (symbols are matched after spaces become "\u2581", so they are written that way)
            user_defined_symbols=[B_INST, E_INST, "\n"] + [x.replace(" ", "\u2581") for x in symbols],
            split_by_whitespace=not phrases,
            max_sentencepiece_length=64 if phrases else 16,
            max_sentence_length=16384,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        os.replace(prefix + ".model", model_path)
    return Tokenizer(model_path)
