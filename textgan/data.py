"""Corpora and tokenizers: shared-data lookup, one-sentence-per-line files, word vocab or SentencePiece."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import torch

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
_WORD_RE = re.compile(r"<unk>|\w+|[^\w\s]", re.UNICODE)  # <unk> stays one (never-matching) token


class CorpusError(ValueError):
    """A corpus file that cannot be used (empty, not UTF-8, a line over the limit)."""


def shared_data_dir() -> Path:
    """`$MMGAN_SHARED_DATA`, else `<repo>/../shared/data` (the repo is the parent of this package)."""
    env = os.environ.get("MMGAN_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def resolve_data_path(path: str | Path) -> Path:
    """`shared:image_coco/train.txt` -> file under the shared data dir; any other string is a plain path."""
    s = str(path)
    return shared_data_dir() / s[len("shared:") :] if s.startswith("shared:") else Path(s)


def words(line: str) -> list[str]:
    """The word tokenisation used for vocabularies and BLEU: lower-case, words and punctuation marks apart."""
    return _WORD_RE.findall(line.lower())


def read_corpus(path: str | Path, max_words: int = 60) -> list[str]:
    """Read a one-sentence-per-line UTF-8 file; blank lines are skipped; clear errors for bad input."""
    path = resolve_data_path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such corpus file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = raw[: e.start].count(b"\n") + 1
        raise CorpusError(f"{path}:{line_no}: not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})") from e
    lines = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        n = len(words(line))
        if n > max_words:
            raise CorpusError(f"{path}:{i}: line has {n} words, over the limit of {max_words} (raise max_words)")
        lines.append(line)
    if not lines:
        raise CorpusError(f"{path}: empty corpus (no non-blank lines)")
    return lines


class WordTokenizer:
    """Word vocabulary with <pad> <bos> <eos> <unk>; words seen fewer than min_count times map to <unk>."""

    kind = "word"

    def __init__(self, itos: list[str]):
        self.itos = itos
        self.stoi = {w: i for i, w in enumerate(itos)}

    @classmethod
    def train(cls, lines: list[str], vocab_size: int = 0, min_count: int = 1) -> WordTokenizer:
        counts = Counter(w for line in lines for w in words(line))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if vocab_size:
            ranked = ranked[: vocab_size - len(SPECIALS)]
        return cls(SPECIALS + ranked)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, line: str) -> list[int]:
        return [self.stoi.get(w, UNK) for w in words(line)]

    def decode(self, ids) -> str:
        return " ".join(self.itos[i] for i in ids if i >= len(SPECIALS) or i == UNK)

    def save(self, directory: Path) -> None:
        _atomic_write_text(Path(directory) / "vocab.json", json.dumps({"kind": "word", "itos": self.itos}))


class SentencePieceTokenizer:
    """SentencePiece unigram model trained on the training split; ids shifted so 0..3 stay our specials."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, lines: list[str], vocab_size: int = 4000, **_) -> SentencePieceTokenizer:
        import io

        import sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([" ".join(words(x)) for x in lines]),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=1.0,
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        return cls(buf.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, line: str) -> list[int]:
        return self.sp.encode(" ".join(words(line)))

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids if i >= len(SPECIALS) or i == UNK])

    def save(self, directory: Path) -> None:
        p = Path(directory) / "tokenizer.model"
        tmp = p.with_suffix(".tmp")
        tmp.write_bytes(self.proto)
        os.replace(tmp, p)


TOKENIZERS = {"word": WordTokenizer, "sentencepiece": SentencePieceTokenizer}


def load_tokenizer(directory: Path):
    directory = Path(directory)
    if (directory / "vocab.json").exists():
        return WordTokenizer(json.loads((directory / "vocab.json").read_text())["itos"])
    if (directory / "tokenizer.model").exists():
        return SentencePieceTokenizer((directory / "tokenizer.model").read_bytes())
    return None


def encode_lines(tok, lines: list[str], max_len: int) -> torch.Tensor:
    """Token ids + <eos>, padded with <pad> -> (N, max_len); sequences over max_len-1 tokens are truncated."""
    out = torch.full((len(lines), max_len), PAD, dtype=torch.long)
    for i, line in enumerate(lines):
        ids = tok.encode(line)[: max_len - 1] + [EOS]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def decode_batch(tok, seqs: torch.Tensor) -> list[str]:
    """(N, T) ids -> strings, cut at the first <eos>."""
    res = []
    for row in seqs.tolist():
        if EOS in row:
            row = row[: row.index(EOS)]
        res.append(tok.decode(row))
    return res


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
