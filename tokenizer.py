r"""
Tokenizers and chat templates: the text side of a checkpoint.

    tok = Tokenizer(folder)          a checkpoint folder (or a tokenizer.model /
                                     tokenizer.json file): SentencePiece or a
                                     Hugging Face tokenizer.json, one interface
    tok.encode(text, bos, eos)       ids;  tok.decode(ids) -> text
    tok.bos_id, tok.eos_id           from the checkpoint's own files
    tok.stop_ids                     every id that ends a response: pass to
                                     sample.generate(eos_id=tok.stop_ids)
    tok.template                     'llama2', 'llama3' or 'chatml', picked
                                     from the checkpoint (Tokenizer(folder,
                                     template='chatml') overrides); None for
                                     a Jinja template in another format (a
                                     chat is then an error naming the file)

    chat_prompt_ids(tok, prompt, system=None)          ids to sample a response from (prompt:
                                                       a string, or messages ending with the user's)
    chat_tokens(tok, prompt, response, system=None)    (ids, response_start)
    chat_ids(tok, messages)                            (ids, spans) for a conversation:
        messages = [{"role": "system"|"user"|"assistant", "content": str}, ...];
        spans = [(start, end), ...], the tokens of each assistant turn (its
        end-of-turn token included): what SFT learns. A conversation ending
        with a user turn ends with the assistant header, ready to sample.

For a checkpoint folder (ours, or one from the Hugging Face hub):

    from tokenizer import Tokenizer, chat_ids, chat_prompt_ids
    tok = Tokenizer("out/run/M1")                    # or Tokenizer(folder, template="chatml")
    ids = chat_prompt_ids(tok, "Name three primes.")  # single turn, ready to sample
    ids, _ = chat_ids(tok, [{"role": "user", "content": q1},
                            {"role": "assistant", "content": a1},
                            {"role": "user", "content": q2}])  # turn 2, ready to sample
    outs = sample.generate(model, [ids], 256, eos_id=tok.stop_ids)
    reply = tok.decode(outs[0])

Two formats behind one interface:
- SentencePiece (`tokenizer.model`): Llama 2 and the toy world (unk=0,
  bos=1, eos=2, no pad). BOS and EOS are the model file's own.
- Hugging Face `tokenizer.json` (Llama 3, SmolLM2, Qwen: byte-level BPE),
  read with the `tokenizers` library. BOS/EOS come from the files beside
  it: tokenizer_config.json and special_tokens_map.json name the tokens,
  generation_config.json and config.json give the ids that end generation
  (Llama 3 instruct ends a turn with <|eot_id|>, not <|end_of_text|>).

The chat templates (ChatML checked against `transformers.apply_chat_template`
with SmolLM2's own Jinja template in tests/test_real_model.py and templates
of Qwen's and Hermes' form, Llama 3's and 3.1's against Jinja templates of
their format, Llama 2's against Meta's formatting):
    llama2  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {reply} </s><s>[INST] ... (last: {reply}</s>)
    llama3  <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>...
    chatml  <|im_start|>{role}\n{text}<|im_end|>\n...
Each message is encoded in pieces, the special tokens inserted as ids, and
a reply apart from the header before it, so the response boundary is exact:
a reply's tokens are the same whether or not the prompt is in front of them,
which is what sampling sees (it writes after the assistant header) and what
the SFT and DPO losses need (they score only reply tokens). This equals
encoding the whole rendered text because the pre-tokenizers of these
vocabularies split at special tokens and split line breaks from the text
after them (not quite for a ChatML reply that begins with a line break or
two spaces: whole-text tokenization would merge those with the header's
line break; nor for ChatML markers added to a SentencePiece-style
vocabulary, a Llama 2 fine-tune's tokenizer.json, where each part encoded
alone starts with its own "\u2581"). Llama 2's and Llama 3's templates strip each text of
surrounding whitespace (Llama 2's system prompt excepted, as in Meta's code);
ChatML's keeps it, as its Jinja templates do. Text that spells a special
token (<|im_end|> in a prompt) becomes that token in a tokenizer.json, as
transformers renders it, and stays text in SentencePiece (Meta's Llama 2). What
a checkpoint's Jinja template writes around the turns is read from it and
written the same way: a default system prompt when none is given (SmolLM2,
Qwen); Llama 3.1+'s system turn, always there, opening with its knowledge
cutoff and a date (the template's fixed date: Llama 3.2's writes today's
where the renderer offers one, which would make the same prompt different
ids on another day); BOS before ChatML where the template writes it (ChatML
fine-tunes of Llama 3). Nothing else of a template is read: its sampling
settings (generation_config.json) neither, only its end-of-turn ids. A
template chosen by a setting is not written into a saved checkpoint: pass
the same setting when using it.
"""
import io
import json
import os
import re

import sentencepiece as spm
from tokenizers import Tokenizer as HFTokenizer

from data import write_bytes

TEMPLATES = ("llama2", "llama3", "chatml")
# the files a tokenizer.json brings with it (copied along when a checkpoint is saved)
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "generation_config.json", "chat_template.jinja")


def read_json(folder, name):
    """A JSON file of the checkpoint folder as a dict ({} when absent)."""
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON ({e})") from None


def as_list(ids):
    """An id or a list of ids (config.json's eos_token_id may be either) as a list."""
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


TIKTOKEN_HELP = (" (Meta's Llama 3 download ships its tokenizer so: use the Hugging Face download's "
                 "tokenizer.json, e.g. put it in the checkpoint folder)")


def is_tiktoken(path):
    """Is `path` a tiktoken vocabulary (lines of "<base64 token> <rank>", what
    Meta's Llama 3 download calls tokenizer.model), not a SentencePiece model?"""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return re.fullmatch(rb"[A-Za-z0-9+/]+=* \d+", f.readline().strip()) is not None


def readable(path, load, what):
    """load() a tokenizer file; a file it cannot parse is a ValueError naming
    the file (the libraries raise their own RuntimeError or Exception, without it)."""
    try:
        return load()
    except Exception as e:
        said = str(e).strip().splitlines()  # (the last line of a long native message; some say nothing)
        raise ValueError(f"{path}: cannot read it as {what}" + (f" ({said[-1][:200]})" if said else "")) from None


def tokenizer_file(folder):
    """The tokenizer file of a checkpoint folder: tokenizer.model (SentencePiece),
    unless tokenizer.json adds tokens it lacks that the checkpoint's chat
    template writes (a fine-tune's chat markers: more_tokens) or it is Meta's
    Llama 3 tiktoken vocabulary (then tokenizer.json)."""
    model, hf = os.path.join(folder, "tokenizer.model"), os.path.join(folder, "tokenizer.json")
    sentencepiece = os.path.isfile(model) and not is_tiktoken(model)
    if os.path.isfile(hf) and (not sentencepiece or more_tokens(hf, model, chat_template_text(folder)[0])):
        return hf
    if sentencepiece:
        return model
    hint = TIKTOKEN_HELP if is_tiktoken(model) else ""
    raise FileNotFoundError(f"tokenizer model not found: no tokenizer.model or tokenizer.json in {folder}{hint}")


class Tokenizer:
    def __init__(self, path, template=""):
        """path: a tokenizer.model, a tokenizer.json, or a folder holding one
        (tokenizer.model first: Llama 2 folders ship both; but tokenizer.json
        where it adds tokens the other lacks that the chat template writes,
        as fine-tunes that add chat markers ship it: tokenizer_file).
        template: a chat template name to use instead of
        the one the checkpoint implies."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = tokenizer_file(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        if is_tiktoken(path):
            raise ValueError(f"{path}: a tiktoken vocabulary, not a SentencePiece model" + TIKTOKEN_HELP)
        self.model_path = path
        folder = os.path.dirname(path)
        config = read_json(folder, "tokenizer_config.json")
        # the named tokens, as transformers reads them: tokenizer_config.json's; in its older form (no
        # added_tokens_decoder), special_tokens_map.json's over them
        tokens_map = read_json(folder, "special_tokens_map.json")
        special = {**tokens_map, **config} if "added_tokens_decoder" in config else {**config, **tokens_map}
        # ids that end generation, as the checkpoint lists them (Llama 3: a list)
        listed_eos = as_list(read_json(folder, "generation_config.json").get("eos_token_id")) + \
            as_list(read_json(folder, "config.json").get("eos_token_id"))
        if path.endswith(".json"):
            self.sp, self.hf = None, readable(path, lambda: HFTokenizer.from_file(path), "a tokenizer.json")
            self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
            self.bos_id = self.token_id(token_text(special.get("bos_token")))
            self.eos_id = self.token_id(token_text(special.get("eos_token")))
            if self.eos_id is None and listed_eos:
                self.eos_id = listed_eos[0]
            # does a text begin with BOS? tokenizer_config says so, or the
            # tokenizer's post-processor adds it (Llama 3 yes, SmolLM2 no)
            self.add_bos = config.get("add_bos_token", self.bos_id is not None
                                      and self.hf.encode("", add_special_tokens=True).ids[:1] == [self.bos_id])
            self.pad_id = self.token_id(token_text(special.get("pad_token")))
            self.pad_id = -1 if self.pad_id is None else self.pad_id  # (said, not used: the trainers pad with
            # eos_id, whose padded positions carry no loss, so a model needs no pad token)
            self.files = [os.path.join(folder, f) for f in HF_TOKENIZER_FILES
                          if os.path.isfile(os.path.join(folder, f))]
        else:
            self.hf, self.sp = None, readable(path, lambda: spm.SentencePieceProcessor(model_file=path),
                                              "a SentencePiece model")
            self.vocab_size = self.sp.vocab_size()
            self.bos_id, self.eos_id, self.add_bos = self.sp.bos_id(), self.sp.eos_id(), True
            self.pad_id = self.sp.pad_id()  # -1 for Llama 2: there is no pad token
            # (a tokenizer.json beside it goes along too: transformers reads it without converting this file)
            self.files = [path] + [os.path.join(folder, f) for f in HF_TOKENIZER_FILES
                                   if os.path.isfile(os.path.join(folder, f))]
        if self.eos_id is None:
            raise ValueError(f"{path}: no EOS token (tokenizer_config.json, special_tokens_map.json, "
                             f"generation_config.json or config.json must name one)")
        # does an encoded text begin with a space? SentencePiece's dummy prefix ("▁") writes one (Llama 2's
        # "[/INST] {reply}" relies on it); a byte-level BPE vocabulary does not
        first = (self.sp.id_to_piece(self.sp.encode("a")[0]) if self.sp
                 else self.hf.encode("a", add_special_tokens=False).tokens[0])
        self.leading_space = first.startswith("▁")

        # the chat template: the setting, else what the checkpoint's own Jinja template or vocabulary shows
        jinja, where = chat_template_text(folder, config)
        if template and template not in TEMPLATES:
            raise ValueError(f"unknown chat template {template!r}; templates: {', '.join(TEMPLATES)}")
        # (None: a Jinja template in none of the formats here; loading works, writing a chat does not)
        self.template = template or detect_template(self, jinja)
        self.template_problem = None if self.template else (
            f"{os.path.join(folder, where)}: its chat template is none of the formats this project writes "
            f"({', '.join(TEMPLATES)}); choose one with chat_template=NAME (the model was not trained in it)")
        # a system prompt the checkpoint's template writes when none is given (SmolLM2, Qwen)
        self.default_system = default_system(jinja) if self.template == "chatml" else None
        # Llama 3.1+: a system turn always, opening with the knowledge cutoff and a date
        self.dated_system = dated_system(jinja) if self.template == "llama3" else None
        # a ChatML template that writes BOS first (ChatML on a Llama 3 base, as Hermes ships it)
        self.chatml_bos = self.template == "chatml" and "bos_token" in jinja and self.bos_id is not None
        end_of_turn = {"llama2": self.eos_id, "llama3": self.token_id("<|eot_id|>"),
                       "chatml": self.token_id("<|im_end|>"), None: self.eos_id}[self.template]
        if end_of_turn is None:
            raise ValueError(f"{path}: chat template {self.template!r} needs special tokens this vocabulary lacks")
        self.end_of_turn = end_of_turn  # what closes a reply in the chat template (SFT learns to write it)
        self.stop_ids = sorted({self.eos_id, end_of_turn, *listed_eos})

    def encode(self, text, bos=False, eos=False):
        """Token ids of text; bos=True begins it as a document (with BOS where
        this tokenizer's texts have one), eos=True ends it with EOS."""
        ids = self.sp.encode(text) if self.sp else self.hf.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.add_bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids):
        ids = list(ids)
        return self.sp.decode(ids) if self.sp else self.hf.decode(ids, skip_special_tokens=False)

    def token_id(self, text):
        """The id of a token written as `text` (a special token like <|eot_id|>), or None."""
        if not text:
            return None
        if self.sp:
            i = self.sp.piece_to_id(text)
            return i if self.sp.id_to_piece(i) == text else None
        return self.hf.token_to_id(text)

    def ids_starting_with(self, prefix):
        """Every id whose text on its own begins with `prefix` (e.g. every line break:
        "\\n", "\\n\\n", ... in a BPE vocabulary, <0x0A> in Llama 2's)."""
        texts = ([self.sp.decode([i]) for i in range(self.vocab_size)] if self.sp
                 else self.hf.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=False))
        return [i for i, t in enumerate(texts) if t.startswith(prefix)]


def token_text(value):
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def more_tokens(json_path, model_path, jinja):
    """Does a tokenizer.json hold tokens the tokenizer.model beside it lacks
    and the chat template writes (chat markers a fine-tune added, such as
    <|im_start|>; not a [PAD] alone, which leaves the texts' ids as they were)?
    jinja: the checkpoint's chat template (chat_template_text)."""
    hf = readable(json_path, lambda: HFTokenizer.from_file(json_path), "a tokenizer.json")
    sp = readable(model_path, lambda: spm.SentencePieceProcessor(model_file=model_path), "a SentencePiece model")
    return any(i >= sp.vocab_size() and t.content in jinja for i, t in hf.get_added_tokens_decoder().items())


def chat_template_text(folder, config=None):
    """(the checkpoint's Jinja chat template, the file it is in): chat_template.jinja
    first, as transformers reads it, else tokenizer_config.json's; ('', file) if none."""
    config = read_json(folder, "tokenizer_config.json") if config is None else config  # (as read already)
    jinja, where = config.get("chat_template") or "", "tokenizer_config.json"
    if isinstance(jinja, list):  # several named templates: the default one
        jinja = next((t["template"] for t in jinja if t.get("name") == "default"), "")
    if os.path.isfile(os.path.join(folder, "chat_template.jinja")):
        with open(os.path.join(folder, "chat_template.jinja"), encoding="utf-8") as f:
            jinja, where = f.read(), "chat_template.jinja"
    return jinja, where


def default_system(jinja):
    """The system prompt a ChatML template writes when none is given (SmolLM2's,
    Qwen's), or None: the first system turn whose text is a literal of the
    template, not Jinja code (as a turn filled in from the messages is)."""
    for m in re.finditer(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", jinja, re.S):
        text = m.group(1)
        if not any(code in text for code in ("{{", "{%", "}}", "%}", "' +", "+ '", '" +', '+ "')):
            return text.replace("\\n", "\n").replace("\\'", "'").replace('\\"', '"')
    return None


def detect_template(tok, jinja=""):
    """The chat template a checkpoint was trained with: told by the markers of
    its Jinja template, else by its vocabulary's special tokens, else (a base
    model, no template) Llama 2's. None for a Jinja template in none of the
    three formats (Zephyr's <|user|>, Vicuna's USER:, Mistral's [INST] without
    Llama 2's <<SYS>> block and BOS per turn, ...): answering such a model in
    another format would go wrong without a word."""
    for marker, name in (("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama3"), ("<<SYS>>", "llama2")):
        if marker in jinja:
            return name
    if jinja.strip():
        return None
    # no template: Llama 3's own header token first, so a Llama 3 base that a fine-tune gave ChatML tokens
    # but no template is read as Llama 3 (a template, above, says what it writes)
    if tok.token_id("<|start_header_id|>") is not None:
        return "llama3"
    if tok.token_id("<|im_start|>") is not None:
        return "chatml"
    return "llama2"


def dated_system(jinja):
    """The text a Llama 3.1+ template writes at the start of its system turn,
    system prompt or not: "Cutting Knowledge Date: December 2023\nToday Date:
    26 Jul 2024\n\n", or None (Llama 3.0). The date is the template's own
    fixed one (Llama 3.2's writes today's date where the renderer offers it:
    here always the fixed one, so that the same prompt gives the same ids)."""
    cutoff = re.search(r"Cutting Knowledge Date: ([^\"'\\\n]+)", jinja)
    if not cutoff:
        return None
    date = re.search(r"set date_string = [\"']([^\"']+)[\"']", jinja)
    return f"Cutting Knowledge Date: {cutoff.group(1)}\nToday Date: {date.group(1) if date else '26 Jul 2024'}\n\n"


# -----------------------------------------------------------------------------
# The chat templates. Each turns messages into parts (ids, is_reply): the
# reply parts are the assistant's text and its end-of-turn token.

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def llama2_parts(tok, messages, open_reply):
    """Meta's Llama 2 chat format: each exchange is <s>[INST] {user} [/INST]
    {reply}</s>; a system prompt sits inside the first [INST]. The reply
    needs no header: it follows "[/INST]" directly. An earlier reply is
    written as Meta's chat_completion writes it, "{reply} </s>" (a space
    before </s>); the last one ends at </s>, as one-turn SFT teaches (our
    choice: Meta's code never writes a last reply, and HF's Jinja template
    writes " {reply} </s>" for every one). Each [INST] begins with <s>, as
    both write it, whatever the tokenizer's add_bos_token says."""
    parts, system = [], None
    for i, m in enumerate(messages):
        if m["role"] == "system":
            system = m["content"]
        elif m["role"] == "user":
            # Meta strips the system block and the first user text as one string: the system text as given
            text = (f"{B_SYS}{system}{E_SYS}{m['content']}" if system is not None else m["content"]).strip()
            system = None
            bos = [tok.bos_id] if tok.bos_id is not None else []  # (a vocabulary without one: none)
            parts.append((bos + tok.encode(f"{B_INST} {text} {E_INST}"), False))
        else:  # "[/INST] {reply}": SentencePiece's dummy prefix writes that space, else we do
            earlier = i + 1 < len(messages)  # Meta's "{reply} </s>"
            space = "" if tok.leading_space else " "
            parts.append((tok.encode(space + m["content"].strip() + " " * earlier) + [tok.end_of_turn], True))
    return parts


def llama3_parts(tok, messages, open_reply):
    """Llama 3's header format: <|start_header_id|>{role}<|end_header_id|>\\n\\n{text}<|eot_id|>.
    Llama 3.1+ (tok.dated_system) always writes a system turn: its dates, then the system prompt, if any."""
    start, end = tok.token_id("<|start_header_id|>"), tok.token_id("<|end_header_id|>")
    parts = [([tok.bos_id] if tok.bos_id is not None else [], False)]
    if tok.dated_system is not None:
        system = messages[0]["content"].strip() if messages[0]["role"] == "system" else ""
        messages = [m for m in messages if m["role"] != "system"]
        parts.append(([start] + tok.encode("system") + [end] + tok.encode("\n\n" + tok.dated_system + system)
                      + [tok.end_of_turn], False))
    for m in messages + ([{"role": "assistant", "content": None}] if open_reply else []):
        header = [start] + tok.encode(m["role"]) + [end]
        if m["role"] == "assistant":  # the header and its line breaks alone: the reply's first token is its own
            parts.append((header + tok.encode("\n\n"), False))  # (Llama 3's pre-tokenizer splits line breaks off)
            if m["content"] is not None:
                parts.append((tok.encode(m["content"].strip()) + [tok.end_of_turn], True))
        else:
            parts.append((header + tok.encode("\n\n" + m["content"].strip()) + [tok.end_of_turn], False))
    return parts


def chatml_parts(tok, messages, open_reply):
    """ChatML (SmolLM2, Qwen): <|im_start|>{role}\\n{text}<|im_end|>\\n. The
    line break after <|im_end|> is written before the next turn, so a reply
    ends with its end-of-turn token. The text is kept as it is: these
    templates do not strip it, where Llama 2's and Llama 3's do."""
    start, newline = tok.token_id("<|im_start|>"), tok.encode("\n")
    parts = [([tok.bos_id], False)] if tok.chatml_bos else []
    for i, m in enumerate(messages + ([{"role": "assistant", "content": None}] if open_reply else [])):
        if i:
            parts.append((newline, False))  # the line break after the previous <|im_end|>
        if m["role"] == "assistant":  # the header alone, so the reply's first token is its own
            parts.append(([start] + tok.encode("assistant\n"), False))
            if m["content"] is not None:
                parts.append((tok.encode(m["content"]) + [tok.end_of_turn], True))
        else:
            parts.append(([start] + tok.encode(f"{m['role']}\n{m['content']}") + [tok.end_of_turn], False))
    return parts


def conversation_problem(messages):
    """What is wrong with a conversation chat_ids cannot render, or None."""
    if not isinstance(messages, list):
        return "'messages' must be a list of {'role', 'content': str}"
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    turns = roles[1:] if roles[:1] == ["system"] else roles
    if not turns or turns != ["user", "assistant"] * (len(turns) // 2) + ["user"] * (len(turns) % 2):
        return ("a conversation alternates user and assistant turns, starting with the user, after an optional "
                f"system message: a list of {{'role', 'content': str}}; got roles {roles}")
    not_text = [i + 1 for i, m in enumerate(messages) if not isinstance(m.get("content"), str)]
    if not_text:
        return f"the content of message {not_text[0]} (of {len(messages)}) is not a string"
    return None


def chat_ids(tok, messages):
    """
    A conversation as token ids under the tokenizer's chat template: returns
    (ids, spans), spans the (start, end) of each assistant reply's tokens,
    end-of-turn token included. When the last message is the user's, ids end
    with the assistant's header: exactly what the model is given to reply.
    Without a system message, the checkpoint's default system prompt (if its
    template has one) is used, as `transformers` does.
    """
    problem = conversation_problem(messages) or tok.template_problem
    if problem:
        raise ValueError(problem)
    if messages[0]["role"] != "system" and tok.default_system is not None:
        messages = [{"role": "system", "content": tok.default_system}] + list(messages)
    render = {"llama2": llama2_parts, "llama3": llama3_parts, "chatml": chatml_parts}[tok.template]
    parts = render(tok, messages, open_reply=messages[-1]["role"] != "assistant")
    ids, spans = [], []
    for part, is_reply in parts:
        if is_reply:
            spans.append((len(ids), len(ids) + len(part)))
        ids += part
    return ids, spans


def chat_prompt_ids(tokenizer, prompt, system=None):
    """Token ids of a chat prompt, ready for the model to write the response.
    prompt: a string (one user turn), or a conversation (messages as chat_ids
    takes them) ending with the user's turn, e.g. MT-Bench's second turn:
    [user q1, assistant a1, user q2]."""
    if isinstance(prompt, str):
        return chat_tokens(tokenizer, prompt, system=system)[0]
    roles = [m.get("role") if isinstance(m, dict) else None for m in prompt]
    if not roles or roles[-1] != "user":
        raise ValueError(f"a conversation to answer alternates user and assistant turns, starting and ending "
                         f"with the user; got roles {roles}")
    turns = ([{"role": "system", "content": system}] if system is not None else []) + list(prompt)
    return chat_ids(tokenizer, turns)[0]


def chat_tokens(tokenizer, prompt, response=None, system=None):
    """
    Turn a prompt (and optionally its response) into token ids.
    Returns (ids, response_start): ids[response_start:] are the response
    tokens followed by the end-of-turn token; without a response,
    response_start == len(ids) and ids is exactly what the model is given
    to sample from.
    """
    messages = ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": prompt}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    ids, spans = chat_ids(tokenizer, messages)
    return ids, spans[-1][0] if response is not None else len(ids)


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
    # trained into memory (a model_prefix would be written into the model file itself, so the same
    # texts would give other bytes in another folder), then written atomically
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
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
    except RuntimeError as e:  # "Vocabulary size is smaller than required_chars. 300 vs 345."
        need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
        if not need:
            raise
        raise ValueError(f"vocab_size = {vocab_size}: the text's characters and fixed pieces (chat markers, "
                         f"symbols) need {need.group(1)} pieces; give at least that") from None
    write_bytes(model_path, model.getvalue())
    return Tokenizer(model_path)


if __name__ == "__main__":
    import configurator
    configurator.library(__doc__, "tokenizer.py", "every script reads its checkpoint's tokenizer through it")
