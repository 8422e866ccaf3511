"""Evaluation: faithfulness, quality, diversity and speed of a text-to-image model, offline.

    from t2i.metrics import evaluate
    evaluate(pipe, "shapes", ["attribute_accuracy", "fid"], num_samples=500)   # a T2IPipeline-like callable
    evaluate("real", "shapes")                                                 # held-out real images: the ceiling

`METRICS` is the registry (name -> function of an `EvalContext`, returning flat figures). Every metric is
computed on the same seeded set of test captions; images, features and caption features are computed once per
`evaluate()` call and shared. See `t2i/metrics/core.py` for each metric and its protocol.
"""

from __future__ import annotations

from t2i.metrics.core import (
    METRICS,
    EvalContext,
    MetricError,
    append_jsonl,
    evaluate,
    metric_names,
)
from t2i.metrics.networks import DEFAULT_EVALUATOR


def evaluator_available(path=None) -> bool:
    """Whether evaluation networks exist at `path` (default: the bundled Shapes 64x64 evaluator).

    Training loops call this before `evaluate()` and skip with a warning when it is False.
    """
    from pathlib import Path

    p = Path(path) if path is not None else DEFAULT_EVALUATOR
    return all((p / f).is_file() for f in ("config.json", "recognizer.safetensors", "matcher.safetensors"))


__all__ = [
    "DEFAULT_EVALUATOR",
    "METRICS",
    "EvalContext",
    "MetricError",
    "append_jsonl",
    "evaluate",
    "evaluator_available",
    "metric_names",
]
