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

__all__ = ["METRICS", "EvalContext", "MetricError", "append_jsonl", "evaluate", "metric_names"]
