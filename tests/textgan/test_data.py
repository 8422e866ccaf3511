import pytest

from textgan.data import EOS, PAD, UNK, CorpusError, SentencePieceTokenizer, WordTokenizer, encode_lines, read_corpus


def test_corpus_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(CorpusError, match="empty corpus"):
        read_corpus(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"a fine line\nbad \xff\xfe bytes\n")
    with pytest.raises(CorpusError, match=r"bad.txt:2: not valid UTF-8"):
        read_corpus(tmp_path / "bad.txt")
    (tmp_path / "long.txt").write_text("short one\n" + "word " * 70 + "\n")
    with pytest.raises(CorpusError, match=r"long.txt:2: line has 70 words, over the limit of 60"):
        read_corpus(tmp_path / "long.txt")
    with pytest.raises(CorpusError, match="no such corpus"):
        read_corpus(tmp_path / "missing.txt")


def test_word_tokenizer_unk_eos_pad():
    tok = WordTokenizer.train(["a cat sits.", "a dog sits."], min_count=2)
    assert tok.decode(tok.encode("a cat sits.")) == "a <unk> sits ."
    x = encode_lines(tok, ["a cat sits.", "a"], max_len=6)
    assert x[0].tolist()[:5] == [*tok.encode("a cat sits."), EOS] and x[0, 4] == EOS and x[0, 5] == PAD
    assert x[1].tolist() == [tok.stoi["a"], EOS, PAD, PAD, PAD, PAD]
    assert UNK in x[0].tolist()


def test_sentencepiece_tokenizer(corpus, tmp_path):
    lines = read_corpus(corpus / "train.txt")
    tok = SentencePieceTokenizer.train(lines, vocab_size=40)
    ids = tok.encode(lines[0])
    assert min(ids) >= 3 and tok.decode(ids).replace(" ", "") == lines[0].replace(" ", "").replace(".", "") + "."
    tok.save(tmp_path)
    from textgan.data import load_tokenizer

    assert load_tokenizer(tmp_path).encode(lines[1]) == tok.encode(lines[1])
