import pytest
import torch

from t2i.text import TextEncoder, pad_features


def test_shapes_and_mask(text_encoder):
    caps = ["a red circle", "a tiny blue five-pointed star in the upper left corner of the picture"]
    f = text_encoder.encode(caps)
    B, T, D = f.words.shape
    assert (B, D) == (2, 384) and f.sentence.shape == (2, 384) and f.mask.shape == (2, T)
    n0, n1 = int(f.mask[0].sum()), int(f.mask[1].sum())
    assert n1 == T and n0 < n1  # padded to the longest caption
    assert torch.all(f.words[0, n0:] == 0)
    assert torch.allclose(f.sentence.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_batching_does_not_change_features(text_encoder):
    caps = ["a red circle", "a big green square at the bottom", "there is a tiny star"]
    full = text_encoder.encode(caps)
    one = text_encoder.encode(caps[1])
    n = int(one.mask.sum())
    assert torch.allclose(full.words[1, :n], one.words[0, :n], atol=1e-4)
    assert torch.allclose(full.sentence[1], one.sentence[0], atol=1e-5)


def test_semantics(text_encoder):
    """Paraphrases are closer than captions that differ in colour (a sanity check of the pretrained weights)."""
    s = text_encoder.encode(["a small red circle at the top", "a little red disc at the top", "a large blue square"])
    sim = s.sentence @ s.sentence.T
    assert sim[0, 1] > sim[0, 2]


def test_cache_hits_and_persistence(tmp_path, text_encoder):
    enc = TextEncoder(text_encoder.name_or_path, max_length=32, cache_dir=tmp_path)
    caps = ["a red circle", "a blue star on the left"]
    f1 = enc.encode(caps)
    assert enc.calls == 1 and len(enc.cache) == 2
    f2 = enc.encode(list(reversed(caps)))
    assert enc.calls == 1, "second encode must be served from the cache"
    assert torch.equal(f1.sentence[0], f2.sentence[1])
    # Cached fp16 features are close to the fresh float32 ones.
    fresh = text_encoder.encode(caps)
    assert torch.allclose(f1.words, fresh.words, atol=2e-2)
    # A new encoder over the same folder reads the shards from disk.
    enc2 = TextEncoder(text_encoder.name_or_path, max_length=32, cache_dir=tmp_path)
    f3 = enc2.encode(caps + ["a new caption"])
    assert enc2.calls == 1 and len(enc2.cache) == 3
    assert torch.equal(f3.words[:2, : f1.words.shape[1]], f1.words)
    assert list(tmp_path.glob("*/shard-*.safetensors")) and not list(tmp_path.glob("*/*.tmp"))


def test_local_directory_and_bad_path(tmp_path, text_encoder):
    # Any local HF model folder works the same: save the default one elsewhere and load it by path.
    text_encoder.model.save_pretrained(tmp_path / "enc")
    text_encoder.tokenizer.save_pretrained(tmp_path / "enc")
    enc = TextEncoder(str(tmp_path / "enc"))
    a, b = enc.encode("a red circle"), text_encoder.encode("a red circle")
    assert torch.allclose(a.sentence, b.sentence, atol=1e-5)
    with pytest.raises(OSError, match="could not load a text encoder"):
        TextEncoder(str(tmp_path / "does-not-exist"))


def test_pad_features_reference():
    per = [(torch.ones(2, 3), torch.zeros(3)), (torch.full((4, 3), 2.0), torch.ones(3))]
    f = pad_features(per)
    assert f.words.shape == (2, 4, 3) and f.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert torch.all(f.words[0, 2:] == 0) and torch.all(f.words[1] == 2)


def test_concurrent_encode_is_safe(tmp_path, text_encoder):
    """A served app encodes from many threads: fast tokenizers alone would fail with 'Already borrowed'."""
    import threading

    enc = TextEncoder(text_encoder.name_or_path, max_length=32, cache_dir=tmp_path)
    caps = [f"a small red circle number {i}" for i in range(16)]
    results, errors = {}, []

    def work(i):
        try:
            results[i] = enc.encode([caps[i], caps[(i + 1) % 16]]).sentence
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ref = enc.encode(caps).sentence
    for i in range(16):
        assert torch.allclose(results[i][0], ref[i], atol=1e-6)


def test_word_features_from_a_chosen_layer(tmp_path, text_encoder):
    """layer=k: words are hidden state k at the real tokens, the sentence stays the last layer's pooling, and the
    cache keeps the layers apart (an unchanged key for the default, so older caches stay valid)."""
    enc = TextEncoder(text_encoder.name_or_path, max_length=32, cache_dir=tmp_path, layer=3)
    caps = ["a red circle left of a blue star", "tiny square"]
    f, ref = enc.encode(caps), text_encoder.encode(caps)
    tok = text_encoder.tokenizer(caps, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = text_encoder.model(**tok, output_hidden_states=True).hidden_states[3]
    assert torch.equal(f.mask, ref.mask) and torch.allclose(f.sentence, ref.sentence, atol=1e-3)
    assert torch.allclose(f.words[f.mask], hidden[tok["attention_mask"].bool()], atol=2e-2)  # fp16 cache
    assert not torch.allclose(f.words, ref.words, atol=0.1)
    assert enc.layer == 3 and enc.config()["layer"] == 3 and text_encoder.layer == -1
    assert TextEncoder(text_encoder.name_or_path, layer=-4).fingerprint == enc.fingerprint  # -4 of 6 is 3
    assert TextEncoder(text_encoder.name_or_path, layer=6).fingerprint == text_encoder.fingerprint  # 6 is the last
    assert enc.fingerprint != text_encoder.fingerprint
    with pytest.raises(ValueError, match="text layer 7 out of range.*6 layers"):
        TextEncoder(text_encoder.name_or_path, layer=7)
