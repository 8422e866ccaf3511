"""The metric registry and `evaluate()`: one seeded set of test captions, generated once, scored by every metric.

Protocols (Shapes; `N` = num_samples):
- evaluation set: Shapes *test* images 0..N-1, each with one of its captions picked by `seed`; a generator draws one
  image per caption. `"real"` uses those test images themselves (the ceiling for accuracy, the floor for FID/KID).
- reference set for FID/KID: real test images N..2N-1 (disjoint from the evaluation set, so `"real"` gives the
  real-vs-real floor rather than 0).
- features: the recognizer's 256-d penultimate feature (`AttributeRecognizer.features`), fed to torchmetrics'
  FrechetInceptionDistance / KernelInceptionDistance as precomputed vectors; `inception_weights=FILE` adds the
  standard Inception FID/KID/IS (`fid_inception`, ...), which needs the `torch-fidelity` package.
- r_precision (AttnGAN/DM-GAN): each image ranks its true caption against 99 mismatched captions drawn from the
  captions of test images whose named attributes differ (two-object scenes: a different pair of objects), by the
  cosine similarity of the separately trained matcher; R@1 over 10 folds, mean and std.
- diversity: mean pairwise L2 distance of recognizer features among k images of the same caption (real: the same
  scene drawn k times with its jitter), averaged over captions; near 0 means mode collapse.
- speed: images/s at batch 1 and 16 and batch-1 latency after a warm-up, peak memory (CUDA: max allocated; CPU:
  the process's peak RSS, which includes everything loaded before), with the device named.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch

from t2i.metrics.attributes import score_predictions, summarize

SHAPES_DATASETS = ("shapes", "shapes:test")


class MetricError(ValueError):
    """A metric cannot be computed for this input; the message names the problem."""


# ---------------------------------------------------------------------------------------------------------------
# Context: everything metrics share, computed lazily and once.


@dataclass
class EvalContext:
    """The generator, the evaluation captions and (lazily) images, features and networks shared by metrics."""

    generator: object  # a T2IPipeline-like callable, or "real"
    dataset: str = "shapes"
    num_samples: int = 500
    seed: int = 0
    evaluator_path: str | Path | None = None
    device: str | torch.device = "cpu"
    progress: bool = True
    options: dict = field(default_factory=dict)

    @property
    def is_real(self) -> bool:
        return isinstance(self.generator, str) and self.generator == "real"

    @property
    def is_shapes(self) -> bool:
        return str(self.dataset) in SHAPES_DATASETS

    # -- data ------------------------------------------------------------------------------------------------
    @cached_property
    def resolution(self) -> int:
        if self.is_shapes:
            return self.evaluator.config.resolution if self.has_evaluator else 64
        return self.evaluator.config.resolution if self.has_evaluator else int(self.options.get("resolution", 64))

    def _examples(self, start: int, stop: int) -> list:
        """(image uint8-free float tensor, captions, attributes) of dataset items start..stop-1."""
        if self.is_shapes:
            from t2i.data.dataset import pil_to_tensor
            from t2i.data.shapes import ShapesConfig, make_sample

            cfg = ShapesConfig(size=self.resolution, seed=int(self.options.get("dataset_seed", 0)))
            split = self.options.get("split", "test")
            out = []
            for i in range(start, stop):
                s = make_sample(cfg, split, i)
                out.append((pil_to_tensor(s.image), s.captions, s.attributes))
            return out
        ds = self._path_dataset
        stop = min(stop, len(ds))
        return [(ex.image, ex.captions, ex.attributes) for ex in (ds[i] for i in range(start, stop))]

    @cached_property
    def _path_dataset(self):
        from t2i.data.dataset import load_dataset

        return load_dataset(self.dataset, split=self.options.get("split", "test"), size=self.resolution)

    @cached_property
    def _eval_items(self) -> list:
        items = self._examples(0, self.num_samples)
        if len(items) < self.num_samples:
            raise MetricError(
                f"dataset {self.dataset} has {len(items)} images, fewer than num_samples={self.num_samples}"
            )
        return items

    @cached_property
    def captions(self) -> list[str]:
        rng = np.random.default_rng([self.seed, 7])
        return [caps[int(rng.integers(len(caps)))] for _, caps, _ in self._eval_items]

    @cached_property
    def attributes(self) -> list[dict] | None:
        attrs = [a for _, _, a in self._eval_items]
        return attrs if all(a is not None for a in attrs) else None

    @cached_property
    def real_reference(self) -> torch.Tensor:
        """Real images disjoint from the evaluation set (N..2N-1): the FID/KID reference."""
        items = self._examples(self.num_samples, 2 * self.num_samples)
        if len(items) < 2:
            raise MetricError(
                f"dataset {self.dataset} has no real images left for the FID/KID reference after the "
                f"{self.num_samples} evaluation images; lower --num-samples"
            )
        return torch.stack([im for im, _, _ in items])

    @cached_property
    def images(self) -> torch.Tensor:
        """(N, 3, R, R) in [-1, 1]: the generated (or held-out real) image of every evaluation caption."""
        if self.is_real:
            return torch.stack([im for im, _, _ in self._eval_items])
        check_resolution(self.generator, self.resolution, self.dataset)
        from tqdm.auto import tqdm

        chunk = int(self.options.get("batch_size", 64))
        outs = []
        for c in tqdm(range(0, self.num_samples, chunk), desc="generating", disable=not self.progress, unit="batch"):
            caps = self.captions[c : c + chunk]
            with torch.no_grad():
                x = self.generator(caps, num_images_per_caption=1, seed=self.seed + c, batch_size=chunk)
            outs.append(_check_images(x, len(caps), self.resolution).float().cpu())
        return torch.cat(outs)

    # -- networks ----------------------------------------------------------------------------------------------
    @property
    def has_evaluator(self) -> bool:
        if self.evaluator_path is not None:
            return True
        from t2i.metrics.networks import DEFAULT_EVALUATOR

        return self.is_shapes and (DEFAULT_EVALUATOR / "config.json").is_file()

    @cached_property
    def evaluator(self):

        if self.evaluator_path is None and not self.is_shapes:
            raise MetricError(
                f"no evaluation networks for dataset {self.dataset!r}: the bundled evaluator is for Shapes 64x64; "
                "train one on this dataset and pass --evaluator DIR"
            )
        return _load_evaluator_cached(str(self.evaluator_path) if self.evaluator_path else None, str(self.device))

    @cached_property
    def cell_predictions(self):
        """The evaluator's reading of every image: CellPrediction (per cell occupancy, shape, colour, size)."""
        from t2i.metrics.networks import decode_cells

        return decode_cells(self._batched(self.evaluator.recognizer, self.images))  # logits (N, 9, 17)

    @torch.no_grad()
    def _batched(self, fn: Callable, x: torch.Tensor, bs: int = 256) -> torch.Tensor:
        return torch.cat([fn(x[i : i + bs].to(self.device)).float().cpu() for i in range(0, len(x), bs)])

    @cached_property
    def features(self) -> torch.Tensor:
        return self._batched(self.evaluator.features, self.images)  # (N, D)

    @cached_property
    def real_features(self) -> torch.Tensor:
        return self._batched(self.evaluator.features, self.real_reference)  # (M, D)

    @cached_property
    def text_encoder(self):
        cfg = self.evaluator.config
        return _text_encoder_cached(cfg.text_max_length)


@lru_cache(maxsize=4)
def _load_evaluator_cached(path: str | None, device: str):
    from t2i.metrics.networks import load_evaluator

    return load_evaluator(path, device=device)


def sentence_features(enc, captions: list[str], chunk: int = 4096) -> torch.Tensor:
    """(N, D) sentence features of `captions` through the encoder's on-disk cache, reading each shard once.

    `TextEncoder.encode` opens a shard per cached caption (~15 ms each here); evaluation and the matcher's training
    read thousands of cached captions, so hits are grouped by shard. Misses go through `encode`, which caches them.
    """
    from collections import defaultdict

    from safetensors import safe_open

    from t2i.text import caption_key

    cache = getattr(enc, "cache", None)
    if cache is None or not hasattr(cache, "_index"):
        return torch.cat([enc.encode(captions[i : i + chunk]).sentence.cpu() for i in range(0, len(captions), chunk)])
    keys = [caption_key(c) for c in captions]
    missing = list(dict.fromkeys(c for c, k in zip(captions, keys) if k not in cache))
    for i in range(0, len(missing), chunk):
        enc.encode(missing[i : i + chunk])
    found: dict[str, torch.Tensor] = {}
    by_shard = defaultdict(list)
    for k in set(keys):
        if k in cache._mem:
            found[k] = cache._mem[k][1]
        else:
            by_shard[cache._index[k]].append(k)
    for shard, ks in by_shard.items():
        with safe_open(str(shard), "pt") as f:
            for k in ks:
                found[k] = f.get_tensor(k + ".s")
    return torch.stack([found[k].float() for k in keys])


@lru_cache(maxsize=2)
def _text_encoder_cached(max_length: int):
    """The default MiniLM with the feature cache; shared with the pipelines' encoder so a process loads it once."""
    try:
        from t2i.pipelines import shared_text_encoder

        return shared_text_encoder(None, max_length)
    except ImportError:
        from t2i.text import TextEncoder, default_cache_dir

        return TextEncoder(max_length=max_length, cache_dir=default_cache_dir())


def check_resolution(generator, resolution: int, dataset: str) -> None:
    """A generator whose declared resolution differs from the dataset's/evaluator's is an error, not a resize."""
    r = getattr(generator, "resolution", None)
    if r is not None and int(r) != int(resolution):
        fam = getattr(generator, "family", type(generator).__name__)
        raise MetricError(
            f"resolution mismatch: the {fam} checkpoint generates {r}x{r} images but dataset {dataset!r} is "
            f"evaluated at {resolution}x{resolution}; evaluate it on a dataset/evaluator of its own resolution"
        )


def _check_images(x, n: int, resolution: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != n or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise MetricError(f"the generator returned {shape}; expected a ({n}, 3, {resolution}, {resolution}) tensor")
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        raise MetricError(
            f"resolution mismatch: the generator made {x.shape[-2]}x{x.shape[-1]} images, the dataset is evaluated "
            f"at {resolution}x{resolution}"
        )
    return x


# ---------------------------------------------------------------------------------------------------------------
# Metrics.


def attribute_accuracy(ctx: EvalContext) -> dict:
    """Share of images showing every attribute their caption names, plus per-attribute accuracies."""
    if ctx.attributes is None:
        raise MetricError(
            f"attribute_accuracy needs a dataset with ground-truth attributes (Shapes); {ctx.dataset!r} has none"
        )
    return summarize(score_predictions(ctx.cell_predictions, ctx.attributes))


class _Precomputed(torch.nn.Module):
    """Hands precomputed feature vectors to torchmetrics' FID/KID unchanged (our feature network ran already)."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets (N, D) through torchmetrics' Fréchet statistics."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    for name, f in (("real", real), ("generated", fake)):
        if len(f) < 2:
            raise MetricError(f"fid needs at least 2 {name} images, got {len(f)}")
    m = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    m.update(real.double(), real=True)
    m.update(fake.double(), real=False)
    return max(0.0, float(m.compute()))  # identical statistics can come out as -1e-6 from the matrix square root


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subset_size: int = 100, subsets: int = 50, seed: int = 0):
    """(KID mean, std) over random subsets, through torchmetrics' polynomial-kernel MMD."""
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(fake))
    if n < subset_size:
        raise MetricError(
            f"kid needs at least subset_size={subset_size} images per set, got {len(fake)} generated and {len(real)} "
            f"real; raise --num-samples or lower --kid-subset-size"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "KID will save all extracted features": that is the point
        m = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=subset_size)
    m.update(real.double(), real=True)
    m.update(fake.double(), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # KID's subsets come from the global RNG
        mean, std = m.compute()
    return float(mean), float(std)


def fid(ctx: EvalContext) -> dict:
    """Fréchet distance in the recognizer's feature space (and Inception's when given local weights)."""
    out = {
        "fid": frechet_distance(ctx.real_features, ctx.features),
        "fid_feature": f"{ctx.evaluator.config.feature_network}-{ctx.features.shape[1]}",
    }
    if ctx.options.get("inception_weights"):
        out.update(_inception_metrics(ctx, kinds=("fid",)))
    return out


def kid(ctx: EvalContext) -> dict:
    """Kernel (MMD) distance in the recognizer's feature space: mean and std over subsets."""
    size = int(ctx.options.get("kid_subset_size", 100))
    mean, std = kernel_distance(ctx.real_features, ctx.features, subset_size=size, seed=ctx.seed)
    out = {"kid": mean, "kid_std": std}
    if ctx.options.get("inception_weights"):
        out.update(_inception_metrics(ctx, kinds=("kid", "is")))
    return out


def _inception_metrics(ctx: EvalContext, kinds) -> dict:
    """Standard FID/KID/IS from a local Inception weights file (torch-fidelity's FID Inception)."""
    path = Path(ctx.options["inception_weights"])
    if not path.is_file():
        raise MetricError(f"--inception-weights {path}: no such file")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise MetricError(
            "standard Inception FID/KID/IS need the `torch-fidelity` package (pip install torch-fidelity)"
        ) from e
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    real = ((ctx.real_reference + 1) * 127.5).round().byte()
    fake = ((ctx.images + 1) * 127.5).round().byte()
    out = {}
    if "fid" in kinds:
        m = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
        m.update(real, real=True)
        m.update(fake, real=False)
        out["fid_inception"] = float(m.compute())
    if "kid" in kinds:
        size = min(int(ctx.options.get("kid_subset_size", 100)), len(real), len(fake))
        m = KernelInceptionDistance(feature=2048, subset_size=size, feature_extractor_weights_path=str(path))
        m.update(real, real=True)
        m.update(fake, real=False)
        mean, std = m.compute()
        out.update(kid_inception=float(mean), kid_inception_std=float(std))
    if "is" in kinds:
        m = InceptionScore(feature_extractor_weights_path=str(path))
        m.update(fake)
        mean, std = m.compute()
        out.update(inception_score=float(mean), inception_score_std=float(std))
    return out


def _distractor_key(attrs: dict) -> tuple:
    """Scenes with equal keys could fit each other's captions, so one never serves as the other's mismatch."""
    objs = sorted((o["shape"], o["color"], o["size"]) for o in attrs["objects"])
    if len(objs) == 1:
        return (objs[0], attrs["objects"][0]["position"])
    return tuple(objs)  # conservative: any relation between the same two objects


def sample_mismatches(own_keys: list, pool_keys: list, n: int, rng: np.random.Generator) -> np.ndarray:
    """(N, n) pool indices per image, drawn without replacement among pool entries whose key differs from its own."""
    pool = np.array([hash(k) for k in pool_keys])
    out = np.empty((len(own_keys), n), dtype=np.int64)
    for i, k in enumerate(own_keys):
        ok = np.flatnonzero(pool != hash(k))
        if len(ok) < n:
            raise MetricError(
                f"r_precision needs {n} mismatched captions per image but the caption pool has only {len(ok)}; "
                "raise --num-samples"
            )
        out[i] = rng.choice(ok, size=n, replace=False)
    return out


def rank_hits(img: torch.Tensor, true_txt: torch.Tensor, neg_txt: torch.Tensor) -> np.ndarray:
    """Is the true caption ranked first? img, true_txt (N, E); neg_txt (N, K, E); cosine scores (unit vectors)."""
    s_true = (img * true_txt).sum(-1)  # (N,)
    s_neg = torch.einsum("ne,nke->nk", img, neg_txt)  # (N, K)
    return (s_neg < s_true[:, None]).all(1).numpy()


def r_precision(ctx: EvalContext) -> dict:
    """AttnGAN/DM-GAN R-precision: R@1 of the true caption among 100 (99 mismatched), 10 folds, mean and std."""
    n_neg, folds = int(ctx.options.get("r_negatives", 99)), int(ctx.options.get("r_folds", 10))
    if ctx.num_samples < folds:
        raise MetricError(f"r_precision needs num_samples >= {folds} (one per fold), got {ctx.num_samples}")
    # Caption pool for mismatches: every caption of test images 0..P-1 (their features are in the text cache).
    pool_n = max(2 * ctx.num_samples, int(ctx.options.get("r_pool_images", 400)))
    pool_items = ctx._examples(0, pool_n)
    pool_caps = [c for _, caps, _ in pool_items for c in caps]
    keyed = ctx.attributes is not None
    pool_keys = [_distractor_key(a) if keyed else i for i, (_, caps, a) in enumerate(pool_items) for _ in caps]
    own_keys = [_distractor_key(a) for a in ctx.attributes] if keyed else list(range(ctx.num_samples))

    mat = ctx.evaluator.matcher
    img = ctx._batched(mat.embed_images, ctx.images)  # (N, E)
    enc = ctx.text_encoder
    uniq = sorted(set(pool_caps) | set(ctx.captions))
    idx = {c: i for i, c in enumerate(uniq)}
    sent = sentence_features(enc, uniq)  # (U, 384)
    txt = ctx._batched(mat.embed_text, sent)  # (U, E)

    rng = np.random.default_rng([ctx.seed, 11])
    neg = sample_mismatches(own_keys, pool_keys, n_neg, rng)  # (N, 99) indices into pool_caps
    pool_idx = torch.tensor([idx[c] for c in pool_caps])
    true_txt = txt[torch.tensor([idx[c] for c in ctx.captions])]  # (N, E)
    hits = rank_hits(img, true_txt, txt[pool_idx[torch.from_numpy(neg)]])
    per_fold = [float(f.mean()) for f in np.array_split(hits, folds)]
    return {"r_precision": float(np.mean(per_fold)), "r_precision_std": float(np.std(per_fold))}


def diversity(ctx: EvalContext) -> dict:
    """Mean pairwise feature distance among k images of one caption, averaged over captions (0 = collapse)."""
    n_caps = min(int(ctx.options.get("diversity_captions", 20)), ctx.num_samples)
    k = int(ctx.options.get("diversity_k", 8))
    if k < 2:
        raise MetricError(f"diversity needs at least 2 images per caption, got diversity_k={k}")
    if ctx.is_real:
        if not ctx.is_shapes:
            return {"diversity": None}
        imgs = _real_redraws(ctx, n_caps, k)
    else:
        check_resolution(ctx.generator, ctx.resolution, ctx.dataset)
        with torch.no_grad():
            imgs = ctx.generator(ctx.captions[:n_caps], num_images_per_caption=k, seed=ctx.seed + 10_000)
        imgs = _check_images(imgs, n_caps * k, ctx.resolution).float().cpu()
    f = ctx._batched(ctx.evaluator.features, imgs).view(n_caps, k, -1)  # (C, k, D)
    d = torch.cdist(f, f)  # (C, k, k)
    mean_pair = d.sum((1, 2)) / (k * (k - 1))
    return {"diversity": float(mean_pair.mean()), "diversity_captions": n_caps, "diversity_k": k}


def _real_redraws(ctx: EvalContext, n_caps: int, k: int) -> torch.Tensor:
    """The real-data reference for diversity: each evaluation scene drawn k times with fresh jitter."""
    from t2i.data.dataset import pil_to_tensor
    from t2i.data.shapes import Scene, render_scene

    out = []
    for i in range(n_caps):
        scene = Scene.from_attributes(ctx.attributes[i])
        for j in range(k):
            out.append(pil_to_tensor(render_scene(scene, ctx.resolution, np.random.default_rng([ctx.seed, i, j]))))
    return torch.stack(out)


def device_name(device) -> str:
    """'NVIDIA H100 (cuda:0)' or 'AMD EPYC ... (CPU, 2 threads)'."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(dev)} ({dev})"
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} (CPU, {torch.get_num_threads()} threads)"


def _generator_device(gen, fallback) -> torch.device:
    d = getattr(gen, "device", None)
    return torch.device(d) if d is not None else torch.device(fallback)


def speed(ctx: EvalContext) -> dict:
    """Sampling speed at batch 1 and 16 after a warm-up, batch-1 latency and peak memory, with the device."""
    if ctx.is_real:
        return {}
    gen, caps = ctx.generator, (ctx.captions * 16)[:16]
    dev = _generator_device(gen, ctx.device)
    reps1, reps16 = int(ctx.options.get("speed_repeats_bs1", 10)), int(ctx.options.get("speed_repeats_bs16", 3))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.no_grad():
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        gen(caps[:1], num_images_per_caption=1, seed=0, batch_size=1)  # warm-up: lazy init, kernels, caches
        gen(caps, num_images_per_caption=1, seed=0, batch_size=16)
        sync()
        t = time.perf_counter()
        for r in range(reps1):
            gen([caps[r % 16]], num_images_per_caption=1, seed=r, batch_size=1)
        sync()
        t1 = (time.perf_counter() - t) / reps1
        t = time.perf_counter()
        for r in range(reps16):
            gen(caps, num_images_per_caption=1, seed=r, batch_size=16)
        sync()
        t16 = (time.perf_counter() - t) / reps16
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"
    return {
        "images_per_second_bs1": 1.0 / t1,
        "images_per_second_bs16": 16.0 / t16,
        "latency_ms_bs1": 1000.0 * t1,
        "peak_memory_mb": peak,
        "peak_memory_kind": kind,
        "speed_device": device_name(dev),
    }


def clip_score(ctx: EvalContext) -> dict:
    """CLIPScore (torchmetrics) of each image with its caption, from a local CLIP model folder."""
    path = ctx.options.get("clip_model")
    if not path:
        raise MetricError("clip_score needs a local CLIP model folder: pass --clip-model DIR (nothing is downloaded)")
    if not Path(path).is_dir():
        raise MetricError(f"--clip-model {path}: not a folder")
    from torchmetrics.multimodal.clip_score import CLIPScore

    m = CLIPScore(model_name_or_path=str(path)).to(ctx.device)
    imgs = ((ctx.images + 1) * 127.5).round().byte()
    for i in range(0, len(imgs), 64):
        m.update(imgs[i : i + 64].to(ctx.device), ctx.captions[i : i + 64])
    return {"clip_score": float(m.compute())}


METRICS: dict[str, Callable[[EvalContext], dict]] = {
    "attribute_accuracy": attribute_accuracy,
    "fid": fid,
    "kid": kid,
    "r_precision": r_precision,
    "clip_score": clip_score,
    "diversity": diversity,
    "speed": speed,
}
DEFAULT_METRICS = ("attribute_accuracy", "fid", "kid", "r_precision", "diversity", "speed")


def metric_names(metrics: list[str] | str | None, dataset: str = "shapes", options: dict | None = None) -> list[str]:
    """Validate a metric list ('a,b' or list); None -> the defaults for the dataset."""
    options = options or {}
    if metrics is None:
        names = list(DEFAULT_METRICS)
        if str(dataset) not in SHAPES_DATASETS:
            names.remove("attribute_accuracy")
        if options.get("clip_model"):
            names.append("clip_score")
        return names
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise MetricError(f"unknown metric(s) {', '.join(map(repr, unknown))}; choose from {', '.join(METRICS)}")
    if not metrics:
        raise MetricError(f"no metric given; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(metrics))


def evaluate(
    generator,
    dataset: str = "shapes",
    metrics: list[str] | None = None,
    num_samples: int = 500,
    seed: int = 0,
    evaluator: str | Path | None = None,
    device=None,
    progress: bool = True,
    **options,
) -> dict:
    """Score `generator` (a T2IPipeline-like callable, or "real") on `dataset`; returns one flat dict of figures.

    options: inception_weights, clip_model, kid_subset_size (100), diversity_captions (20), diversity_k (8),
    batch_size (64), speed_repeats_bs1 (10), speed_repeats_bs16 (3), dataset_seed (0), split ("test"; "train"
    scores captions of training images 0..N-1, to measure the generalisation gap).
    """
    names = metric_names(metrics, dataset, options)
    split = options.get("split", "test")
    if str(dataset) in SHAPES_DATASETS and split not in ("train", "test"):
        raise MetricError(f"split must be 'train' or 'test' for Shapes, got {split!r}")
    if num_samples < 1:
        raise MetricError(f"num_samples must be >= 1, got {num_samples}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = EvalContext(generator, str(dataset), int(num_samples), int(seed), evaluator, str(device), progress, options)
    if "attribute_accuracy" in names and not ctx.is_shapes and ctx.attributes is None:
        raise MetricError(
            f"attribute_accuracy needs a dataset with ground-truth attributes (Shapes); {dataset!r} has none"
        )
    if not ctx.is_real:
        check_resolution(generator, ctx.resolution, str(dataset))
    if "kid" in names and num_samples < int(options.get("kid_subset_size", 100)):
        raise MetricError(
            f"kid needs num_samples >= its subset size {int(options.get('kid_subset_size', 100))}, got {num_samples}; "
            "raise --num-samples or lower --kid-subset-size"
        )
    t0 = time.time()
    result: dict = {
        "generator": "real" if ctx.is_real else _generator_name(generator),
        "dataset": str(dataset),
        "split": split,
        "num_samples": int(num_samples),
        "seed": int(seed),
        "metrics": ",".join(names),
    }
    for name in names:
        t = time.time()
        result.update(METRICS[name](ctx))
        result[f"time_{name}_s"] = round(time.time() - t, 2)
    if any(n != "speed" for n in names):
        result["evaluator"] = str(ctx.evaluator.path) if ctx.has_evaluator and "evaluator" in ctx.__dict__ else None
    result["device"] = device_name(ctx.device)
    result["time_s"] = round(time.time() - t0, 2)
    result["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {k: _plain(v) for k, v in result.items()}


def _generator_name(gen) -> str:
    for attr in ("name", "path", "family"):
        v = getattr(gen, attr, None)
        if v:
            return str(v)
    return type(gen).__name__


def _plain(v):
    """JSON-friendly floats (NaN -> None, 6 significant digits kept by json)."""
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 6)
    if isinstance(v, (np.floating, np.integer)):
        return _plain(v.item())
    return v


def append_jsonl(path: str | Path, result: dict) -> Path:
    """Append one evaluation to a jsonl file (one JSON object per line; creates the folder)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
        f.write(json.dumps(result) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return p
