"""How much the frozen text encoder's features see word order: two-object captions against their mirrors.

For each Shapes two-object test scene, its caption "A <rel> B" is compared with (1) the same caption with the
relation flipped ("A <inverse rel> B": the other picture) and (2) the mirrored caption "B <inverse rel> A" (the same
picture). A text feature that reads order should put (1) far from the caption and (2) near it. Printed: the mean
cosine similarity of the sentence features, and of the object words' features (the tokens of both objects' shape
and colour words, position by position where both captions tokenise alike).

    python benchmarks/text_order.py --num 200
"""

from __future__ import annotations

import argparse
import json
import sys


def pairs(num: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(caption, relation flipped, mirrored) for the first `num` two-object test scenes."""
    from t2i.data.shapes import _INVERSE, ShapesConfig, make_scene

    cfg, out, i = ShapesConfig(seed=seed), [], 0
    while len(out) < num:
        scene, _ = make_scene(cfg, "test", i)
        i += 1
        if len(scene.objects) != 2:
            continue
        a, b = (f"a {o.size} {o.color} {o.shape}" for o in scene.objects)
        rel = scene.relation
        out.append((f"{a} {rel} {b}", f"{a} {_INVERSE[rel]} {b}", f"{b} {_INVERSE[rel]} {a}"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=200, help="two-object scenes")
    p.add_argument("--text-encoder", default=None, help="local model folder (default: the bundled MiniLM)")
    args = p.parse_args(argv)

    import torch.nn.functional as F

    from t2i.text import TextEncoder

    enc = TextEncoder(args.text_encoder, max_length=32)
    rows = pairs(args.num)
    f0, f1, f2 = (enc.encode([r[k] for r in rows]) for k in range(3))
    res = {"scenes": len(rows), "example": list(rows[0])}
    for name, f in (("flipped", f1), ("mirrored", f2)):
        res[f"sentence_cos_{name}"] = round(float(F.cosine_similarity(f0.sentence, f.sentence, dim=-1).mean()), 4)
    # Object words: the caption and its relation-flipped twin tokenise alike except for the relation words, so
    # compare the tokens of the first object's description (positions 1..4 after [CLS]) one to one.
    same_len = (f0.mask.sum(1) == f1.mask.sum(1)).nonzero().flatten()
    w0, w1 = f0.words[same_len, 1:5], f1.words[same_len, 1:5]
    res["object_word_cos_flipped"] = round(float(F.cosine_similarity(w0, w1, dim=-1).mean()), 4)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
