"""The SentencePiece wrapper, the chat template, and the toy tokenizer trainer."""
import json
import os
import re
import shutil

import pytest

from tokenizer import B_INST, E_INST, Tokenizer, chat_prompt_ids, chat_tokens, is_tiktoken, train_tokenizer


def test_llama2_tokenizer_ids(llama_tokenizer_path):
    tok = Tokenizer(llama_tokenizer_path)
    assert tok.encode("Hello world") == [15043, 3186]
    assert tok.encode("Hello world", bos=True, eos=True) == [1, 15043, 3186, 2]
    assert (tok.bos_id, tok.eos_id, tok.vocab_size, tok.pad_id) == (1, 2, 32000, -1)
    assert tok.decode([15043, 3186]) == "Hello world"


def test_llama2_chat_template_boundary(llama_tokenizer_path):
    tok = Tokenizer(llama_tokenizer_path)
    ids, start = chat_tokens(tok, "  What is 2+2? ", "It is 4.")
    pieces = [tok.sp.id_to_piece(i) for i in ids]
    # <s>[INST] What is 2+2? [/INST] It is 4.</s>, the response starting right after "]"
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids[:start]) == "[INST] What is 2+2? [/INST]"
    assert pieces[start - 3:start] == ["/", "INST", "]"]
    assert tok.decode(ids[start:-1]) == "It is 4."
    assert pieces[start] == "▁It"
    # the prompt part is exactly what sampling is given
    assert chat_prompt_ids(tok, "What is 2+2?") == ids[:start]
    assert chat_tokens(tok, "What is 2+2?") == (ids[:start], start)
    # and it matches Meta's reference formatting of one turn, encoded whole
    whole = tok.encode(f"{B_INST} What is 2+2? {E_INST} It is 4.", bos=True, eos=True)
    assert whole == ids


@pytest.mark.parametrize("text", ["Hello  world\n\ttab", "  leading spaces", "trailing ", "a\n\nb   c",
                                  "ünïcödé 漢字 🙂", "[INST] reverse 'abc' [/INST] cba", "", "0123456789"])
def test_toy_tokenizer_is_lossless(toy_tokenizer_path, text):
    tok = Tokenizer(toy_tokenizer_path)
    assert tok.decode(tok.encode(text)) == text


def test_toy_tokenizer_conventions(toy_tokenizer_path):
    tok = Tokenizer(toy_tokenizer_path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, -1)
    assert 259 < tok.vocab_size <= 512  # 256 bytes + specials + learned pieces
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")  # it learned merges
    ids, start = chat_tokens(tok, "reverse the word fox", "xof")
    assert tok.decode(ids[start:]) == "xof" and ids[-1] == tok.eos_id


def test_train_tokenizer_is_deterministic_and_atomic(tmp_path):
    texts = [f"count the letters in word number {i}" for i in range(500)]
    a = train_tokenizer(texts, str(tmp_path / "a" / "t.model"), vocab_size=300)
    b = train_tokenizer(texts, str(tmp_path / "b" / "t.model"), vocab_size=300)
    pieces = lambda t: [(t.sp.id_to_piece(i), t.sp.get_score(i)) for i in range(t.vocab_size)]
    assert pieces(a) == pieces(b)
    # byte for byte, though written in other folders: the file records no training path
    assert (tmp_path / "a" / "t.model").read_bytes() == (tmp_path / "b" / "t.model").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["t.model"]
    # fewer pieces than the text's characters need: the setting named (it was SentencePiece's RuntimeError)
    with pytest.raises(ValueError, match=r"^vocab_size = 200: the text's characters and fixed pieces \(chat markers, "
                                         r"symbols\) need 2\d\d pieces; give at least that$") as e:
        train_tokenizer(texts, str(tmp_path / "c" / "t.model"), vocab_size=200)
    assert int(re.search(r"need (\d+) pieces", str(e.value))[1]) > 200  # what is needed, not what was given
    assert not (tmp_path / "c").exists()


def test_a_trained_tokenizer_splits_every_digit(tmp_path):
    """As Llama's does: numbers are read digit by digit (the toy world's
    arithmetic), never as pieces learned whole ("2024")."""
    import random
    rng = random.Random(0)
    texts = [f"add {rng.randint(0, 99)} and {rng.randint(0, 99)} to get 2024" for _ in range(2000)]
    tok = train_tokenizer(texts, str(tmp_path / "t.model"), vocab_size=400)
    pieces = [tok.sp.id_to_piece(i) for i in tok.encode("year 2024 has 12 months")]
    assert [p.lstrip("\u2581") for p in pieces if p.lstrip("\u2581").isdigit()] == ["2", "0", "2", "4", "1", "2"]


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer model not found"):
        Tokenizer(str(tmp_path / "nope.model"))


def test_phrase_pieces_compress_recurring_text_losslessly(tmp_path):
    rubric = "Review the user's question and the corresponding response using the additive 5-point scoring system."
    texts = [f"{rubric} User: count the letters in word {i}" for i in range(300)]
    words = train_tokenizer(texts, str(tmp_path / "w.model"), vocab_size=400)
    phrases = train_tokenizer(texts, str(tmp_path / "p.model"), vocab_size=400, phrases=True)
    assert len(phrases.encode(rubric)) < len(rubric.split()) <= len(words.encode(rubric))
    for text in texts[:20] + ["  odd  spacing\nand ünïcode"]:
        assert phrases.decode(phrases.encode(text)) == text


def test_symbols_make_each_rubric_line_one_piece(tmp_path):
    from judge import JUDGE_PROMPT, judge_prompt, rubric_lines
    lines = rubric_lines()
    assert "\n".join(lines).count("Score") == JUDGE_PROMPT.count("Score") and len(lines) == 13
    texts = [judge_prompt(f"Count the letters of word {i}.", str(i)) for i in range(200)]
    plain = train_tokenizer(texts, str(tmp_path / "p.model"), vocab_size=600, phrases=True)
    tok = train_tokenizer(texts, str(tmp_path / "s.model"), vocab_size=600, phrases=True, symbols=lines)
    for line in lines:
        assert len(tok.encode(line)) <= 2  # the piece, after at most the dummy-prefix space
    text = judge_prompt("How many letters are in 'nalu'?", "Sure!  It is 4.\n")
    assert tok.decode(tok.encode(text)) == text
    seen = judge_prompt("Count the letters of word 7.", "7")
    assert len(tok.encode(seen)) < 40 < 100 < len(plain.encode(seen))
    with pytest.raises(ValueError, match="newline"):
        train_tokenizer(texts, str(tmp_path / "x.model"), symbols=["two\nlines"])


def test_newline_is_its_own_piece(tmp_path, llama_tokenizer_path):
    texts = [f"Task: reverse the word number {i}.\nTask: sort it.\n" for i in range(300)]
    for tok in (train_tokenizer(texts, str(tmp_path / "p.model"), vocab_size=400, phrases=True),
                Tokenizer(llama_tokenizer_path)):
        newline = tok.encode("\n")[-1]
        ids = tok.encode(texts[7])
        assert ids.count(newline) == 2 and tok.decode(ids) == texts[7]


# --- tokenizer.json, special tokens from the checkpoint's files, chat templates ---

from tokenizer import chat_ids, token_text  # noqa: E402

# Llama 3's chat format as a Jinja template (written here from the format's
# description), the way a checkpoint's tokenizer_config.json carries it
LLAMA3_JINJA = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
                "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CONVERSATION = [{"role": "system", "content": "You answer in one sentence."},
                {"role": "user", "content": "What is a prime number?"},
                {"role": "assistant", "content": "A number with exactly two divisors: 1 and itself."},
                {"role": "user", "content": "Is 1 prime?\n\nExplain briefly."}]


@pytest.fixture(scope="module")
def llama3_style(tmp_path_factory):
    """A small byte-level BPE tokenizer.json with Llama 3's special tokens, its
    BOS added to every text by the post-processor (as Llama 3's is), and the
    files a Llama 3 instruct checkpoint has beside it."""
    from tokenizers import Regex, Tokenizer as HFTok, decoders, models, pre_tokenizers, processors, trainers
    folder = tmp_path_factory.mktemp("llama3_style")
    tk = HFTok(models.BPE())
    # line breaks are pre-tokens of their own, whatever follows them (as in Llama 3's pre-tokenizer)
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\s*[\r\n]+"), "isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tk.decoder = decoders.ByteLevel()
    texts = [m["content"] for m in CONVERSATION] * 50 + ["the quick brown fox jumps over the lazy dog.\n\n"] * 50
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=LLAMA3_SPECIAL,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                      special_tokens=[("<|begin_of_text|>", 0)])
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
        "chat_template": LLAMA3_JINJA, "tokenizer_class": "PreTrainedTokenizerFast"}))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [1, 4]}))
    return folder


def test_tokenizer_json_special_tokens_from_the_checkpoint_files(llama3_style):
    tok = Tokenizer(llama3_style)  # the folder: tokenizer.json and the files beside it
    assert tok.model_path.endswith("tokenizer.json") and tok.sp is None
    assert (tok.bos_id, tok.eos_id, tok.end_of_turn, tok.stop_ids) == (0, 1, 4, [1, 4])
    assert tok.template == "llama3" and tok.default_system is None and tok.vocab_size <= 400
    assert tok.pad_id == -1  # (no pad token named: none, not id 0, which is BOS here)
    assert token_text({"content": "<|eot_id|>", "lstrip": False}) == token_text("<|eot_id|>")  # older files' form
    assert tok.encode("the fox", bos=True, eos=True)[::len(tok.encode("the fox")) + 1] == [0, 1]
    assert tok.decode(tok.encode("Is 1 prime?\n\nok")) == "Is 1 prime?\n\nok"
    assert sorted(os.path.basename(f) for f in tok.files) == ["generation_config.json", "tokenizer.json",
                                                               "tokenizer_config.json"]
    # the template from the vocabulary when no Jinja template says it, or as a setting says
    cfg = json.loads((llama3_style / "tokenizer_config.json").read_text())
    (llama3_style / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": None}))
    try:
        assert Tokenizer(llama3_style).template == "llama3"
        as_llama2 = Tokenizer(llama3_style, template="llama2")
        assert as_llama2.template == "llama2" and not as_llama2.leading_space
        # a byte-level vocabulary adds no space of its own: "[/INST] {reply}" is written with it
        assert as_llama2.decode(chat_ids(as_llama2, CONVERSATION[1:4])[0]).startswith(
            f"<|begin_of_text|>[INST] {CONVERSATION[1]['content']} [/INST] {CONVERSATION[2]['content']} ")
        with pytest.raises(ValueError, match="unknown chat template 'llama4'"):
            Tokenizer(llama3_style, template="llama4")
        with pytest.raises(ValueError, match="needs special tokens this vocabulary lacks"):
            Tokenizer(llama3_style, template="chatml")
    finally:
        (llama3_style / "tokenizer_config.json").write_text(json.dumps(cfg))


def test_every_eos_id_the_checkpoint_lists_stops_generation(tmp_path, llama3_style):
    """stop_ids holds every id generation_config.json and config.json list
    as eos_token_id (Llama 3.1 lists <|eom_id|> beside <|end_of_text|> and
    <|eot_id|>), not only the EOS token and the template's end of turn."""
    folder = retemplated(llama3_style, tmp_path / "listed")
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [1, 4, 2]}))
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 3}))
    tok = Tokenizer(folder)
    assert (tok.eos_id, tok.end_of_turn, tok.stop_ids) == (1, 4, [1, 2, 3, 4])
    # a checkpoint that lists <|end_of_text|> alone (Llama 3 base's files): the template's end of turn,
    # which SFT teaches the model to write after each reply, stops generation too
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 1}))
    tok = Tokenizer(folder)
    assert (tok.eos_id, tok.end_of_turn, tok.stop_ids) == (1, 4, [1, 4])
    # one that lists the end of turn alone: the EOS token the tokenizer names stops generation too
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 4}))
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 4}))
    assert Tokenizer(folder).stop_ids == [1, 4]


def test_named_tokens_and_listed_eos_ids_are_read_as_transformers_reads_them(tmp_path, llama3_style):
    """Where tokenizer_config.json and special_tokens_map.json name different
    EOS tokens, transformers takes the config's in its newer form (with
    added_tokens_decoder) and the map's in the older form; where no file names
    one, the EOS is the first id generation_config.json lists (before
    config.json's)."""
    transformers = pytest.importorskip("transformers")
    names = {str(i): {"content": t, "special": True} for i, t in enumerate(LLAMA3_SPECIAL)}
    for newer, eos in ((False, 1), (True, 4)):  # the map's <|end_of_text|>, or the config's <|eot_id|>
        folder = retemplated(llama3_style, tmp_path / f"newer{newer}", eos_token="<|eot_id|>",
                             **({"added_tokens_decoder": names} if newer else {}))
        (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|end_of_text|>"}))
        assert Tokenizer(folder).eos_id == transformers.AutoTokenizer.from_pretrained(folder).eos_token_id == eos
    folder = retemplated(llama3_style, tmp_path / "unnamed")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    del cfg["eos_token"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [4, 1]}))
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 1}))
    tok = Tokenizer(folder)
    assert tok.eos_id == 4 and tok.encode("the", eos=True)[-1] == 4


def test_which_jinja_template_names_the_format(tmp_path, llama3_style):
    """chat_template.jinja (where newer checkpoints keep it) over the config's
    own, as transformers renders; of several named templates the "default";
    and a ChatML template is ChatML even where it mentions Llama 3's header
    token (here, to remove it from a message)."""
    from tokenizer import detect_template
    transformers = pytest.importorskip("transformers")
    zephyr = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    folder = retemplated(llama3_style, tmp_path / "jinja_file", chat_template=zephyr)
    (folder / "chat_template.jinja").write_text(LLAMA3_JINJA)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    assert Tokenizer(folder).template == "llama3"
    assert hf.apply_chat_template(CONVERSATION[1:2], tokenize=False).startswith("<|begin_of_text|><|start_header_id|>")
    tools = "{% for m in messages %}<|tool|>{{ m['content'] }}{% endfor %}"
    folder = retemplated(llama3_style, tmp_path / "named", chat_template=[
        {"name": "tool_use", "template": tools}, {"name": "default", "template": LLAMA3_JINJA}])
    assert Tokenizer(folder).template == "llama3"
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | replace('<|start_header_id|>', '') "
              "}}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert detect_template(None, chatml) == "chatml"


def test_llama3_template_equals_apply_chat_template(llama3_style):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer(llama3_style)
    hf = transformers.AutoTokenizer.from_pretrained(llama3_style)

    def reference(messages, **kw):
        ids = hf.apply_chat_template(messages, tokenize=True, **kw)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    padded = [{**m, "content": f"  {m['content']}\n"} for m in CONVERSATION]  # the template trims each text
    for messages in [CONVERSATION[:n] for n in (2, 3, 4)] + [padded]:
        ids, spans = chat_ids(tok, messages)
        open_reply = messages[-1]["role"] == "user"
        assert ids == reference(messages, add_generation_prompt=open_reply)
        assert [tok.decode(ids[s:e]) for s, e in spans] == \
            [m["content"].strip() + "<|eot_id|>" for m in messages if m["role"] == "assistant"]
    # single turn: the reply follows the assistant header exactly
    ids, start = chat_tokens(tok, "What is a prime number?", "A number with exactly two divisors.")
    assert ids[:start] == chat_prompt_ids(tok, "What is a prime number?")
    assert tok.decode(ids[:start]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ids[start:] == tok.encode("A number with exactly two divisors.") + [tok.token_id("<|eot_id|>")]


def test_llama2_multi_turn_is_metas_format(llama_tokenizer_path):
    """Each earlier exchange <s>[INST] {user} [/INST] {reply} </s>, encoded
    whole, the system prompt inside the first [INST] (Meta's chat_completion);
    the last reply, as one-turn SFT teaches it, ends at </s>."""
    tok = Tokenizer(llama_tokenizer_path)
    assert tok.template == "llama2" and tok.stop_ids == [2] and tok.leading_space
    ids, spans = chat_ids(tok, CONVERSATION)
    sys_user = f"<<SYS>>\n{CONVERSATION[0]['content']}\n<</SYS>>\n\n{CONVERSATION[1]['content']}"
    expected = tok.encode(f"[INST] {sys_user} [/INST] {CONVERSATION[2]['content']} ", bos=True, eos=True) + \
        tok.encode(f"[INST] {CONVERSATION[3]['content']} [/INST]", bos=True)
    assert ids == expected and chat_prompt_ids(tok, CONVERSATION) == expected
    (s, e), = spans
    assert tok.decode(ids[s:e - 1]) == CONVERSATION[2]["content"] + " " and ids[e - 1] == 2
    ids, spans = chat_ids(tok, CONVERSATION[:3])  # ending with the reply: "{reply}</s>"
    assert ids[spans[-1][0]:] == tok.encode(CONVERSATION[2]["content"], eos=True)
    # Meta strips the system block and the first user text as one string: the system text kept as given,
    # and the user text's leading spaces after it
    padded = [{"role": "system", "content": "  Be brief. "}, {"role": "user", "content": "   hi there \n"}]
    assert chat_prompt_ids(tok, padded) == tok.encode("[INST] <<SYS>>\n  Be brief. \n<</SYS>>\n\n   hi there [/INST]",
                                                      bos=True)
    # <s> before every [INST] is the template's, not the tokenizer's: a tokenizer.json whose config says
    # add_bos_token false (its documents begin without BOS) still writes it
    # an empty system prompt given is a system block, empty (Meta's format wraps whatever the system turn holds),
    # as a string prompt and as a conversation; None is none
    empty_system = tok.encode("[INST] <<SYS>>\n\n<</SYS>>\n\nHi [/INST]", bos=True)
    assert chat_prompt_ids(tok, "Hi", system="") == chat_prompt_ids(tok, [{"role": "user", "content": "Hi"}],
                                                                     system="") == empty_system
    assert chat_prompt_ids(tok, "Hi") == tok.encode("[INST] Hi [/INST]", bos=True)
    tok.add_bos = False
    assert chat_prompt_ids(tok, CONVERSATION) == expected
    # a vocabulary with no BOS at all (a template forced on it): the turns without one, not None in the ids
    tok.bos_id = None
    assert chat_prompt_ids(tok, CONVERSATION) == [i for i in expected if i != 1]


def test_bad_conversations_are_clear_errors(llama_tokenizer_path):
    tok = Tokenizer(llama_tokenizer_path)
    for bad in ([], [{"role": "bot", "content": "x"}],
                [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
                [{"role": "assistant", "content": "a"}], [{"role": "user", "content": "a"}] * 2, ["hi"]):
        with pytest.raises(ValueError, match="a conversation alternates user and assistant turns"):
            chat_ids(tok, bad)
    with pytest.raises(ValueError, match=r"the content of message 1 \(of 1\) is not a string"):
        chat_ids(tok, [{"role": "user", "content": 3}])


def test_line_break_ids(llama_tokenizer_path, llama3_style):
    """Every token that begins a new line: Llama 2's <0x0A>; in a BPE
    vocabulary also "\\n\\n" and longer runs."""
    llama2 = Tokenizer(llama_tokenizer_path)
    assert llama2.ids_starting_with("\n") == [13]  # <0x0A>
    bpe = Tokenizer(llama3_style)
    breaks = bpe.ids_starting_with("\n")
    assert bpe.encode("\n")[0] in breaks and bpe.encode("\n\n") == [bpe.token_id("ĊĊ")]
    assert bpe.token_id("ĊĊ") in breaks and all(bpe.decode([i]).startswith("\n") for i in breaks)


def test_prompt_writer_lines_end_whatever_the_vocabulary(tmp_path, toy_tokenizer_path, llama3_style):
    """selfreward's prompt writer stops at a token that begins a line and keeps
    the text before the first line break, also when a token holds text and a
    line break together ("?\\n"), as in a vocabulary whose merges cross them."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

    from selfreward import first_line
    merged = HFTok(models.BPE())
    merged.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # merges cross "\n"
    merged.decoder = decoders.ByteLevel()
    merged.train_from_iterator(["Name a color?\nTask: Name a fruit?\n\nTask: Why?\n"] * 50,
                               trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    merged.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    written = "Name a color?\nTask: Name a fruit?\n\nTask:"
    for tok in (Tokenizer(toy_tokenizer_path), Tokenizer(llama3_style), Tokenizer(tmp_path)):
        breaks = set(tok.ids_starting_with("\n"))
        ids = tok.encode(written)
        cut = next((i for i, t in enumerate(ids) if t in breaks), len(ids))  # where generate() stops
        assert first_line(tok, ids[:cut], room=64) == ("Name a color?", True)
        unended = tok.encode("Name a color")
        assert first_line(tok, unended, room=len(unended))[1] is False  # ran out of tokens
    assert any("?\n" in tok.decode([t]) for t in tok.encode(written))  # the case the rule is for


def test_saved_checkpoint_carries_the_tokenizer_files_and_eos_ids(tmp_path, llama3_style):
    """save_model copies tokenizer.json and the files beside it, and writes
    config.json's BOS and EOS ids (a list when several end a turn), so the
    checkpoint reloads with the same template and transformers reads both."""
    transformers = pytest.importorskip("transformers")
    from checkpoint import save_model
    from model import ModelArgs, Transformer
    tok = Tokenizer(llama3_style)
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, multiple_of=16))
    save_model(model, tmp_path / "ckpt", tokenizer_path=llama3_style)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (0, [1, 4])
    again = Tokenizer(tmp_path / "ckpt")
    assert (again.template, again.stop_ids, again.files and again.model_path.endswith("tokenizer.json")) == \
        ("llama3", [1, 4], True)
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "ckpt").eos_token_id == [1, 4]
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    assert hf("the fox")["input_ids"] == tok.encode("the fox", bos=True)


@pytest.mark.parametrize("which", ["toy", "llama2"])
def test_a_saved_sentencepiece_checkpoint_encodes_as_ours_in_transformers(tmp_path, which, request):
    """A checkpoint whose tokenizer is a SentencePiece model alone (the toy
    world's, Meta's Llama 2): save_model writes a tokenizer_config.json that
    says BOS comes first, so transformers encodes every text as encode(bos=True)
    does, runs of spaces, newlines and accents included (without the file it
    left BOS out of every text)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf", reason="transformers reads a SentencePiece model through protobuf")
    from checkpoint import save_model
    from model import ModelArgs, Transformer
    path = request.getfixturevalue("toy_tokenizer_path" if which == "toy" else "llama_tokenizer_path")
    tok = Tokenizer(path)
    save_model(Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, multiple_of=16)),
               tmp_path / "ckpt", tokenizer_path=path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    texts = ["the quick brown fox", "  two  spaces,  twice.  ", "a line\nand another\n\n", "Grüße, naïve café: 12 + 30 = 42",
             "Reverse the word 'ZOMINO'."]
    for text in texts:
        assert hf.encode(text) == tok.encode(text, bos=True), text
        assert hf.decode(hf.encode(text, add_special_tokens=False)) == tok.decode(tok.encode(text)), text
    assert (hf.bos_token_id, hf.eos_token_id) == (tok.bos_id, tok.eos_id)
    # a tokenizer_config.json already beside the SentencePiece model is the one the checkpoint keeps
    own = {**json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text()), "model_max_length": 123}
    (tmp_path / "src").mkdir()
    shutil.copy(path, tmp_path / "src" / "tokenizer.model")
    (tmp_path / "src" / "tokenizer_config.json").write_text(json.dumps(own))
    save_model(Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, multiple_of=16)),
               tmp_path / "again", tokenizer_path=tmp_path / "src")
    assert json.loads((tmp_path / "again" / "tokenizer_config.json").read_text()) == own


def test_a_tiktoken_vocabulary_is_named_and_a_tokenizer_json_beside_it_used(tmp_path, llama3_style, toy_tokenizer_path):
    """Meta's own Llama 3 download names its tiktoken vocabulary tokenizer.model:
    not read as SentencePiece (a parse error with no setting or fix named), but
    named; a folder that also has a tokenizer.json uses that."""
    folder = tmp_path / "meta"
    folder.mkdir()
    (folder / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n")  # tiktoken: base64 token, rank
    with pytest.raises(FileNotFoundError, match="no tokenizer.model or tokenizer.json.*tiktoken|Llama 3's download"):
        Tokenizer(folder)
    with pytest.raises(ValueError, match="a tiktoken vocabulary, not a SentencePiece model"):
        Tokenizer(folder / "tokenizer.model")
    for f in os.listdir(llama3_style):  # tokenizer.json and the files that name its special tokens
        shutil.copy(os.path.join(llama3_style, f), folder / f)
    assert Tokenizer(folder).model_path == str(folder / "tokenizer.json")
    assert not is_tiktoken(toy_tokenizer_path)  # a SentencePiece model is not taken for one


# --- the chat templates of today's hub checkpoints --------------------------

def retemplated(src, dst, **config):
    """A copy of tokenizer folder src with tokenizer_config.json's entries replaced."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**cfg, **config}))
    return dst


def hf_chat_ids(folder, messages):
    """transformers' rendering of the folder's own Jinja template, ready to answer."""
    transformers = pytest.importorskip("transformers")
    ids = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


# Llama 3.1's chat format (3.2, 3.3 the same) as a Jinja template, written here from
# the format's description: a system turn always, opening with the knowledge
# cutoff and a date (the template's own, "26 Jul 2024", unless the caller passes one)
LLAMA31_JINJA = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = \"\" %}{%- endif %}"
    "{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Cutting Knowledge Date: December 2023\\n\" }}"
    "{{- \"Today Date: \" + date_string + \"\\n\\n\" }}{{- system_message }}{{- \"<|eot_id|>\" }}"
    "{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def test_llama31_writes_its_dated_system_turn_as_apply_chat_template_does(tmp_path, llama3_style):
    folder = retemplated(llama3_style, tmp_path / "l31", chat_template=LLAMA31_JINJA)
    tok = Tokenizer(folder)
    assert tok.template == "llama3" and tok.dated_system == \
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    padded = [{"role": "system", "content": "  \tYou answer in one sentence. \n\n"}] + CONVERSATION[1:]  # trimmed
    for messages in (CONVERSATION[1:2], CONVERSATION[:2], CONVERSATION[1:], CONVERSATION, padded):
        assert chat_prompt_ids(tok, messages) == hf_chat_ids(folder, messages)
    # a template of another date (a later release's) writes its own, as its Jinja does
    dated = retemplated(llama3_style, tmp_path / "l31-dated",
                        chat_template=LLAMA31_JINJA.replace("26 Jul 2024", "15 Mar 2025"))
    assert Tokenizer(dated).dated_system == "Cutting Knowledge Date: December 2023\nToday Date: 15 Mar 2025\n\n"
    for messages in (CONVERSATION[1:2], padded):
        assert chat_prompt_ids(Tokenizer(dated), messages) == hf_chat_ids(dated, messages)
    # the date set in single quotes reads the same
    quoted = retemplated(llama3_style, tmp_path / "l31-quoted",
                         chat_template=LLAMA31_JINJA.replace('"26 Jul 2024"', "'15 Mar 2025'"))
    assert Tokenizer(quoted).dated_system == "Cutting Knowledge Date: December 2023\nToday Date: 15 Mar 2025\n\n"
    assert chat_prompt_ids(Tokenizer(quoted), padded) == hf_chat_ids(quoted, padded)
    ids, spans = chat_ids(tok, CONVERSATION[:3])  # the reply's tokens are still exactly its own
    assert tok.decode(ids[spans[0][0]:spans[0][1]]) == CONVERSATION[2]["content"] + "<|eot_id|>"
    assert Tokenizer(llama3_style).dated_system is None  # Llama 3.0 writes no system turn of its own


def test_chatml_reply_keeps_its_trailing_spaces_as_smollm2s_template_does(smollm2):
    """ChatML keeps a reply's text as written (its Jinja templates do not trim
    it): replies ending in spaces or a line break, against SmolLM2's own
    template through transformers' apply_chat_template (tests/conftest.py:
    smollm2), as the prompt of the next turn and as a finished conversation
    (which the template ends with a line break after <|im_end|>, we at it)."""
    folder, _, hf_tok = smollm2
    tok = Tokenizer(folder)

    def reference(messages, **kw):
        ids = hf_tok.apply_chat_template(messages, tokenize=True, **kw)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    for reply in ("Paris, of course.   ", "Paris.\n", "Rome  \n  "):
        chat = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": reply}]
        follow_up = chat + [{"role": "user", "content": "And of Italy?"}]
        assert chat_prompt_ids(tok, follow_up) == reference(follow_up, add_generation_prompt=True), repr(reply)
        ids, spans = chat_ids(tok, chat)
        assert ids + tok.encode("\n") == reference(chat), repr(reply)
        assert tok.decode(ids[spans[-1][0]:spans[-1][1]]) == reply + "<|im_end|>"


def chatml_folder(folder, **config):
    """A small byte-level BPE tokenizer.json with ChatML's markers (and a Llama 3
    style BOS, for ChatML fine-tunes of Llama 3), and the tokenizer_config.json given."""
    from tokenizers import Regex, Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers
    folder.mkdir()
    tk = HFTok(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\s*[\r\n]+"), "isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tk.decoder = decoders.ByteLevel()
    texts = [m["content"] for m in CONVERSATION] * 50 + ["You are Qwen, a helpful assistant.\n"] * 50
    tk.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|begin_of_text|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "tokenizer_class": "PreTrainedTokenizerFast", **config}))
    return folder


# written here from the structure of Qwen2.5's template: a tools branch whose system turn is filled
# in from the messages comes first, the literal default system prompt after it
QWEN_LIKE_JINJA = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- endif %}{{- '\\n\\n# Tools<|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}{%- if not (m.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# ChatML on a Llama 3 base, as Hermes ships it: BOS first
HERMES_LIKE_JINJA = ("{{bos_token}}{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                     "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                     "{% endif %}")


def test_chatml_default_system_prompt_and_bos_as_apply_chat_template_writes_them(tmp_path):
    qwen = chatml_folder(tmp_path / "qwen", chat_template=QWEN_LIKE_JINJA)
    tok = Tokenizer(qwen)  # the literal default system prompt, not the tools branch's template code
    assert tok.template == "chatml" and tok.default_system == "You are Qwen, a helpful assistant."
    from tokenizer import default_system  # a literal with a quote in it, escaped as Jinja writes it, is one too
    assert default_system("{{ '<|im_start|>system\\nYou\\'re kind.<|im_end|>\\n' }}") == "You're kind."
    hermes = chatml_folder(tmp_path / "hermes", chat_template=HERMES_LIKE_JINJA, bos_token="<|begin_of_text|>")
    assert Tokenizer(hermes).default_system is None and Tokenizer(hermes).chatml_bos
    for folder in (qwen, hermes):
        tok = Tokenizer(folder)
        for messages in (CONVERSATION[1:2], CONVERSATION[:2], CONVERSATION):
            assert chat_prompt_ids(tok, messages) == hf_chat_ids(folder, messages), folder
    # a base model's files name <|endoftext|> as EOS (Qwen's): a reply still ends with the template's <|im_end|>,
    # the token the model learns to write and generation stops at
    base = chatml_folder(tmp_path / "qwen-base", chat_template=QWEN_LIKE_JINJA, eos_token="<|endoftext|>")
    tok = Tokenizer(base)
    assert (tok.eos_id, tok.end_of_turn) == (1, 3) and tok.stop_ids == [1, 3]
    ids, start = chat_tokens(tok, "hi", "ok")
    assert ids[-1] == tok.end_of_turn and tok.decode(ids[start:]) == "ok<|im_end|>"
    # files that name no EOS at all: said, with where one is looked for
    with pytest.raises(ValueError, match=r"tokenizer\.json: no EOS token \(tokenizer_config\.json, special_tokens_map"):
        Tokenizer(chatml_folder(tmp_path / "no-eos", eos_token=None))


def test_a_chat_template_in_none_of_our_formats_is_named_not_guessed(tmp_path, llama3_style):
    """Zephyr's format (TinyLlama-Chat's): the tokenizer loads (a model may be
    trained on plain text), but writing a chat says which file and what to
    do; the check before any work says it too, unless chat_template chooses
    one of ours."""
    import validate
    from checkpoint import save_model
    from model import ModelArgs, Transformer
    zephyr = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    folder = retemplated(llama3_style, tmp_path / "zephyr", chat_template=zephyr)
    tok = Tokenizer(folder)
    assert tok.template is None and tok.encode("the fox") == Tokenizer(llama3_style).encode("the fox")
    with pytest.raises(ValueError, match=r"zephyr/tokenizer_config.json: its chat template is none of the formats"):
        chat_prompt_ids(tok, "hi")
    assert Tokenizer(folder, template="llama3").template == "llama3"
    # Mistral's form: [INST] too, but one BOS for the whole chat and no <<SYS>> block: not Llama 2's
    mistral = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
               "' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
    assert Tokenizer(retemplated(llama3_style, tmp_path / "mistral", chat_template=mistral)).template is None
    llama2 = ("{% for m in messages %}{% if loop.index0 == 0 and system_message %}{% set content = '<<SYS>>\\n' + "
              "system_message + '\\n<</SYS>>\\n\\n' + m['content'] %}{% endif %}{{ bos_token + '[INST] ' + "
              "content.strip() + ' [/INST]' }}{% endfor %}")  # (Meta's Llama 2 chat template's markers)
    assert Tokenizer(retemplated(llama3_style, tmp_path / "llama2", chat_template=llama2)).template == "llama2"
    save_model(Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, multiple_of=16)),
               tmp_path / "ckpt", tokenizer_path=folder)
    p = validate.Problems(None)
    assert validate.check_checkpoint(p, "ckpt", str(tmp_path / "ckpt"))[0] is None
    assert "choose one with chat_template=NAME" in p.message("x")
    p = validate.Problems(None)
    assert validate.check_checkpoint(p, "ckpt", str(tmp_path / "ckpt"), chat_template="llama3")[0] is not None
    assert validate.check_checkpoint(p, "ckpt", str(tmp_path / "ckpt"), chats=False)[0] is not None  # (a writer)
    assert not p.found


def test_a_tokenizer_json_with_tokens_the_sentencepiece_model_lacks_is_the_one_read(tmp_path, llama3_style):
    """Fine-tunes that add chat markers ship them in tokenizer.json only: it
    is read instead of the tokenizer.model beside it. Tokens added that the
    chat template does not write (a [PAD]) leave tokenizer.model the one read,
    and a saved checkpoint carries both files (transformers reads
    tokenizer.json without converting)."""
    from tokenizers import Tokenizer as HFTok
    small = train_tokenizer(["the quick brown fox\n"] * 20, str(tmp_path / "small.model"), vocab_size=300)
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    for added, template, read in ((["<|im_start|>", "<|im_end|>"], chatml, "tokenizer.json"),
                                  (["[PAD]"], None, "tokenizer.model")):
        folder = retemplated(llama3_style, tmp_path / added[0].strip("<|>[]"), chat_template=template)
        tk = HFTok.from_file(str(folder / "tokenizer.json"))
        tk.add_special_tokens(added)  # ids after every one of tokenizer.model's
        tk.save(str(folder / "tokenizer.json"))
        shutil.copy(tmp_path / "small.model", folder / "tokenizer.model")
        assert small.vocab_size <= min(tk.token_to_id(t) for t in added)
        tok = Tokenizer(folder)
        assert tok.model_path == str(folder / read), added
    # the first id past tokenizer.model's (a vocabulary of exactly its size, one token added)
    from tokenizers import models, pre_tokenizers
    edge = tmp_path / "edge"
    edge.mkdir()
    shutil.copy(tmp_path / "small.model", edge / "tokenizer.model")
    tk = HFTok(models.WordLevel({"<unk>": 0, **{f"w{i}": i for i in range(1, small.vocab_size)}}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(["<|im_end|>"])
    assert tk.token_to_id("<|im_end|>") == small.vocab_size
    tk.save(str(edge / "tokenizer.json"))
    (edge / "tokenizer_config.json").write_text(json.dumps({"chat_template": chatml.replace("<|im_start|>", ""),
                                                            "eos_token": "w2"}))
    assert Tokenizer(edge).model_path == str(edge / "tokenizer.json")
    assert "tokenizer.json" in [os.path.basename(f) for f in tok.files]
    from checkpoint import save_model
    from model import ModelArgs, Transformer
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.vocab_size, multiple_of=16))
    save_model(model, tmp_path / "saved", tokenizer_path=str(folder))  # (the [PAD] folder: tokenizer.model read)
    assert {"tokenizer.model", "tokenizer.json"} <= set(os.listdir(tmp_path / "saved"))
    assert Tokenizer(tmp_path / "saved").model_path == str(tmp_path / "saved" / "tokenizer.model")


def test_a_vocabulary_with_llama3_headers_and_chatml_markers_but_no_template_is_llama3(tmp_path):
    """A Llama 3 base given ChatML tokens by a fine-tune, no chat template:
    Llama 3's header token decides (tokenizer.detect_template's docstring)."""
    from tokenizers import Tokenizer as HFTok, models, pre_tokenizers

    from tokenizer import Tokenizer
    tk = HFTok(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>", "<|im_start|>", "<|im_end|>"])
    tk.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}))
    tok = Tokenizer(tmp_path)
    assert tok.template == "llama3" and tok.end_of_turn == tk.token_to_id("<|eot_id|>")
