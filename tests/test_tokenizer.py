"""The SentencePiece wrapper, the chat template, and the toy tokenizer trainer."""
import pytest

from tokenizer import B_INST, E_INST, Tokenizer, chat_prompt_ids, chat_tokens, train_tokenizer


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
    assert pieces(a) == pieces(b)  # (the file itself also records the temporary training path)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["t.model"]


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
