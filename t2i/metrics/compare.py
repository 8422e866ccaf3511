"""`t2i compare`: the same captions and seeds through several models -> report.md, grid.png and plots.

Every model is scored by `evaluate()` with the same seed (so the same test captions), next to a reference row of
held-out real images. The grid shows one row per caption and one column per model (plus the real image when the
captions come from the dataset), each cell drawn with the same seed.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from t2i.metrics.core import evaluate, metric_names

# Columns of the report table: (key, header, format, better).
TABLE = (
    ("attribute_accuracy", "attr. acc.", "{:.3f}", "higher"),
    ("acc_color", "colour", "{:.3f}", "higher"),
    ("acc_shape", "shape", "{:.3f}", "higher"),
    ("acc_position", "position", "{:.3f}", "higher"),
    ("acc_relation", "relation", "{:.3f}", "higher"),
    ("fid", "FID", "{:.3f}", "lower"),
    ("kid", "KID", "{:.4f}", "lower"),
    ("r_precision", "R-prec.", "{:.3f}", "higher"),
    ("clip_score", "CLIP", "{:.2f}", "higher"),
    ("diversity", "diversity", "{:.3f}", "closer to real"),
    ("latency_ms_bs1", "ms/img bs1", "{:.1f}", "lower"),
    ("images_per_second_bs16", "img/s bs16", "{:.1f}", "higher"),
    ("peak_memory_mb", "peak MB", "{:.0f}", "lower"),
)
BAR_METRICS = ("attribute_accuracy", "fid", "r_precision", "diversity")


def read_captions(path: str | Path) -> list[str]:
    """One caption per non-empty line."""
    caps = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not caps:
        raise ValueError(f"{path}: no captions (expected one per line)")
    return caps


def make_grid(rows: list[list[torch.Tensor]], captions: list[str], headers: list[str], cell: int = 128) -> Image.Image:
    """rows[r][c]: image (3, R, R) in [-1, 1] -> a PIL grid with a caption column and a header row."""
    from t2i.data.dataset import tensor_to_pil

    text_w, head_h, pad = 260, 28, 4
    W = text_w + len(headers) * (cell + pad) + pad
    H = head_h + len(rows) * (cell + pad) + pad
    grid = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, h in enumerate(headers):
        draw.text((text_w + pad + c * (cell + pad), 8), h[:22], fill=(0, 0, 0))
    for r, (cap, imgs) in enumerate(zip(captions, rows)):
        y = head_h + r * (cell + pad)
        draw.multiline_text((6, y + 4), "\n".join(textwrap.wrap(cap, 40)[:8]), fill=(0, 0, 0))
        for c, im in enumerate(imgs):
            if im is None:
                continue
            pil = tensor_to_pil(im).resize((cell, cell), Image.NEAREST)
            grid.paste(pil, (text_w + pad + c * (cell + pad), y))
    return grid


def _fmt(v, fmt: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, dict):
        v = v.get("mean")
    try:
        return fmt.format(v)
    except (TypeError, ValueError):
        return str(v)


def write_report(out: Path, results: dict[str, dict], reference: dict | None, cmd: str, grid_caps: list[str]) -> Path:
    rows = dict(results)
    if reference is not None:
        rows = {"real (held-out)": reference, **rows}
    cols = [c for c in TABLE if any(r.get(c[0]) is not None for r in rows.values())]
    lines = [
        "# Model comparison",
        "",
        f"Command: `{cmd}`",
        "",
        "Same seed and captions for every model; `real (held-out)` scores held-out real test images as if generated "
        "(the ceiling of accuracy and R-precision, the floor of FID/KID).",
        "",
        "| model | " + " | ".join(h for _, h, _, _ in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(k), f) for k, _, f, _ in cols) + " |")
    lines += ["", "Better: " + "; ".join(f"{h} {b}" for _, h, _, b in cols) + ".", ""]
    any_r = next(iter(rows.values()))
    lines += [
        f"Samples per model: {any_r.get('num_samples')}; device: {any_r.get('device')}.",
        "",
        "## Samples",
        "",
        "![grid](grid.png)",
        "",
        "Rows are captions, columns models (same seed):",
        "",
        *[f"{i + 1}. {c}" for i, c in enumerate(grid_caps)],
        "",
        "## Plots",
        "",
        "![metrics](metrics.png)",
        "",
        "![quality vs latency](quality_vs_latency.png)",
        "",
    ]
    p = out / "report.md"
    p.write_text("\n".join(lines))
    return p


def plot_metrics(out: Path, results: dict[str, dict], reference: dict | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    keys = [k for k in BAR_METRICS if any(r.get(k) is not None for r in results.values())]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
        names = list(results)
        for ax, k in zip(axes[0], keys):
            vals = [results[n].get(k) or 0.0 for n in names]
            ax.bar(range(len(names)), vals, color="tab:blue")
            if reference is not None and reference.get(k) is not None:
                ax.axhline(reference[k], color="tab:green", ls="--", label="real")
                ax.legend(fontsize=8)
            ax.set_xticks(range(len(names)), [n[:14] for n in names], rotation=30, ha="right", fontsize=8)
            ax.set_title(k)
        fig.tight_layout()
        fig.savefig(out / "metrics.png", dpi=110)
        plt.close(fig)
        paths.append(out / "metrics.png")
    qkey = next((k for k in ("attribute_accuracy", "r_precision", "fid") if any(
        r.get(k) is not None for r in results.values())), None)  # fmt: skip
    fig, ax = plt.subplots(figsize=(5, 4))
    for n, r in results.items():
        if r.get("latency_ms_bs1") is not None and qkey and r.get(qkey) is not None:
            ax.scatter(r["latency_ms_bs1"], r[qkey])
            ax.annotate(n[:20], (r["latency_ms_bs1"], r[qkey]), fontsize=8)
    if reference is not None and qkey and reference.get(qkey) is not None:
        ax.axhline(reference[qkey], color="tab:green", ls="--", label="real")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("sampling latency at batch 1 (ms, log)")
    ax.set_ylabel(qkey or "quality")
    ax.set_title("quality vs sampling latency")
    fig.tight_layout()
    fig.savefig(out / "quality_vs_latency.png", dpi=110)
    plt.close(fig)
    paths.append(out / "quality_vs_latency.png")
    return paths


def compare(
    pipelines: dict[str, object],
    out_dir: str | Path,
    dataset: str = "shapes",
    metrics: list[str] | str | None = None,
    num_samples: int = 500,
    seed: int = 0,
    captions: list[str] | None = None,
    grid_rows: int = 8,
    evaluator: str | Path | None = None,
    device=None,
    progress: bool = True,
    command: str = "",
    **options,
) -> dict:
    """Score every pipeline and the real reference, write report.md, grid.png, metrics.png, quality_vs_latency.png."""
    if not pipelines:
        raise ValueError("compare needs at least one model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = metric_names(metrics, dataset, options)
    kw = dict(dataset=dataset, num_samples=num_samples, seed=seed, evaluator=evaluator, device=device,
              progress=progress, **options)  # fmt: skip
    reference = (
        evaluate("real", metrics=[m for m in names if m != "speed"] or None, **kw) if names != ["speed"] else None
    )
    results = {name: evaluate(pipe, metrics=names, **kw) for name, pipe in pipelines.items()}

    # Grid: the same captions and seed through every model (+ the real image when captions are the dataset's).
    real_col = captions is None
    if captions is None:
        from t2i.metrics.core import EvalContext

        ctx = EvalContext("real", dataset, grid_rows, seed, evaluator, "cpu", False, options)
        captions, real_imgs = ctx.captions, list(ctx.images)
    captions = captions[:grid_rows] if real_col else captions
    cols = {}
    for name, pipe in pipelines.items():
        with torch.no_grad():
            cols[name] = list(pipe(captions, num_images_per_caption=1, seed=seed).float().cpu())
    headers = (["real"] if real_col else []) + list(pipelines)
    rows = [([real_imgs[i]] if real_col else []) + [cols[n][i] for n in pipelines] for i in range(len(captions))]
    make_grid(rows, captions, headers).save(out / "grid.png")

    plot_metrics(out, results, reference)
    write_report(out, results, reference, command, captions)
    (out / "results.json").write_text(json.dumps({"reference": reference, "models": results}, indent=2) + "\n")
    return {"reference": reference, "models": results, "out": str(out)}
