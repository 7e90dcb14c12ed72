"""
Seed data for the method: the toy world (data/toy.py) and Open Assistant
(data/prepare_oasst.py), plus the JSON Lines helpers every stage shares and
the fingerprints that say what a saved file was made from.

Record formats (one JSON object per line):
    SFT / IFT   {"prompt": str, "response": str, ...}
    EFT group   {"prompt": str, "responses": [str, ...], "ranks": [int, ...], ...}
                ranks as in Open Assistant: 0 = best, one per response
    EFT target  {"prompt": <judge prompt text>, "response": <justification> "\nScore: N"}
                an SFT record: the model learns to write the judgment
Extra keys (task, ids, scores) ride along and are ignored by the trainers.
"""
import errno
import hashlib
import json
import os
import shutil
import tempfile

SEED_FILES = ["ift.jsonl", "eft_train.jsonl", "eft_eval.jsonl"]  # every seed's (the toy world writes two more)


def fields_of(rec):
    """A record's fields as an error message lists them: 'instruction, output', a
    field that holds no string with its type, 'chosen (list)'; 'no fields'."""
    return ", ".join(k if isinstance(v, str) else f"{k} ({type(v).__name__})" for k, v in rec.items()) or "no fields"


def read_jsonl(path, fields=(), allow_empty=True, check=None):
    """All records of a JSON Lines file, each a JSON object with string values
    for `fields` (and for which check(record), if given, returns None rather
    than what is wrong with it). Errors name the file and line, so a bad
    record is found in seconds; an empty file is an error unless allow_empty."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder: give a JSON Lines file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    records = []
    with open(path, "rb") as f:  # decoded line by line, so that a stray byte is named by its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # (a BOM, as Windows editors write)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {e.object[e.start]:#04x} at column "
                                 f"{e.start + 1}; save the file as UTF-8)") from None  # (e.object: less a BOM)
            if not line.strip():
                continue
            # a JSON array (a file json.dump wrote) is the common mistake: JSON Lines is one object a line
            array = " (the file looks like one JSON array: JSON Lines is one object per line)" \
                if lineno == 1 and line.lstrip().startswith("[") else ""
            try:  # (without its line end: a line cut short is named at its own end, not at a next line's start)
                rec = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                # (some of json's messages end in "at", as "Invalid control character at")
                what = e.msg.removesuffix(" at")
                raise ValueError(f"{path}:{lineno}: malformed JSON ({what} at column {e.colno}){array}") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, found {type(rec).__name__}{array}")
            bad = [k for k in fields if not isinstance(rec.get(k), str)]
            if bad:
                raise ValueError(f"{path}:{lineno}: missing or non-string field(s): {', '.join(bad)} "
                                 f"(each record needs {', '.join(fields)}; this one has {fields_of(rec)})")
            why = check(rec) if check else None
            if why:
                raise ValueError(f"{path}:{lineno}: {why}")
            records.append(rec)
    if not records and not allow_empty:
        raise ValueError(f"{path}: no records (the file is empty)")
    return records


def unwritable(folder):
    """What would stop this process making `folder` (if missing) and writing
    files in it, or None: a file in the way, a read-only file system or no
    permission. Checked before any work, since otherwise it fails only at the
    first file written, minutes in."""
    folder = os.path.abspath(folder)
    there = folder
    while not os.path.exists(there):  # the nearest part of the path that exists
        there = os.path.dirname(there)
    if not os.path.isdir(there):
        return f"{there} is a file, not a folder"
    if not os.access(there, os.W_OK | os.X_OK):  # (access says EROFS for a read-only mount, even to root)
        return f"cannot write in {there}: no permission, or a read-only file system"
    try:  # and a real try: to root, access says yes where only the file system can say no (/proc, /sys)
        fd, probe = tempfile.mkstemp(dir=there, prefix=".write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        return f"cannot make a file in {there} ({e.strerror})"
    return None


def unwritable_file(path):
    """What would stop write_text writing the file `path` (it makes missing
    folders), or None."""
    if os.path.isdir(path):
        return "is a folder: give the file to write"
    return unwritable(os.path.dirname(os.path.abspath(path)))


def sync_to_disk(path):
    """Make a file's bytes durable before a rename publishes it, or a folder's
    entries (the rename itself) after it (fsync). A file system that cannot
    sync (some network and FUSE mounts say so) is left to do what it does: the
    rename still makes the write atomic for readers."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_text(path, text):
    """Write a text file (UTF-8) atomically: write_bytes."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path, data):
    """Write a file atomically: to a temporary file beside path, synced to
    disk, then os.replace, so a reader (or a resumed run) never sees a
    half-written file, even after a power cut. The temporary file has a fixed
    name, .tmp-NAME: one left by a kill is overwritten by the next write of
    the same file, never piles up (one job writes a run folder or out_dir:
    distributed.sole_writer)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, ".tmp-" + os.path.basename(path))
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        sync_to_disk(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.isfile(tmp):  # (open itself may have failed: its error is the one to see)
            os.unlink(tmp)
        raise
    sync_to_disk(folder)  # the rename, so that a power cut cannot bring back the old file
    return path


def write_jsonl(path, records):
    """Write records as JSON Lines, atomically (write_text)."""
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_folder_atomically(path, write_into):
    """Write a folder completely in a temporary folder beside it, then swap it
    into place, so a crash never leaves it half written. The files are synced
    to disk before the swap (a power cut must not leave empty weight files
    behind a finished rename). The old folder is moved aside as .tmp-NAME.old,
    then renamed .tmp-NAME.trash to be deleted, so a .old folder is always
    whole: a kill between the two renames leaves it, and the next write puts
    it back before it starts. What killed writes leave (140 GB at 70B) is
    removed then too."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, ".tmp-" + name)
    old, trash = tmp + ".old", tmp + ".trash"
    os.makedirs(parent, exist_ok=True)

    def put_back_old():
        if os.path.exists(old) and not os.path.exists(path):
            os.replace(old, path)

    def remove(p):  # a folder, or a file that stood at the folder's path (rmtree leaves a file)
        if os.path.isfile(p) or os.path.islink(p):
            try:
                os.remove(p)
            except OSError:  # (as rmtree's ignore_errors)
                pass
        else:
            shutil.rmtree(p, ignore_errors=True)
    put_back_old()
    for leftover in (tmp, old, trash):
        remove(leftover)
    os.mkdir(tmp)
    try:
        write_into(tmp)
        for folder, _, files in os.walk(tmp):
            for file in files:
                sync_to_disk(os.path.join(folder, file))
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        sync_to_disk(parent)  # the renames themselves
    except BaseException:
        put_back_old()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(old):
        os.replace(old, trash)
        remove(trash)  # the new folder is in place: a failure here loses nothing


# -----------------------------------------------------------------------------
# Fingerprints: what a saved piece of work was made from, so that it is reused
# only when it would come out the same (run_folder.py's stages, a trainer's
# state and reference log-probs, sample.py's partial output).

def fingerprint(*parts):
    """A short hex digest of JSON-able parts (settings, token ids, other fingerprints)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


HASHED_BYTES = 64 * 2**20  # files up to this size are hashed whole; bigger ones (weights) by size and time


def file_fingerprint(path):
    """A file's (or a folder's, file by file) fingerprint: its bytes, or for a
    big file its size and modification time (hashing 140 GB of Llama 70B
    weights at every start would take minutes)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return fingerprint(*[(name, file_fingerprint(os.path.join(path, name)))
                             for name in sorted(os.listdir(path)) if not name.startswith(".")])
    st = os.stat(path)
    if st.st_size > HASHED_BYTES:
        return fingerprint(st.st_size, st.st_mtime_ns)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()[:16]
