"""Does a GAN checkpoint's discriminator read the caption? Mean logits per stage on one training batch for
real/matching, real/mismatched and fake/matching pairs (conditional and unconditional), plus the scale of the text
encoder's sentence and word features. A D that reads the text scores real/mismatched well below real/matching.
On Shapes it also asks, per kind of near miss (t2i.data.shapes.near_miss: the image's own scene with one shape,
colour, size, position changed, or two objects swapped), how often D scores the true caption above the near miss on
the same real image (0.5: D does not check that attribute); "mirror" is the caption itself with left and right
swapped (t2i.text.mirror_caption), where it names a side.

    python benchmarks/d_matching.py runs/shapes_stackgan-002 runs/shapes_stackgan-002/checkpoints/step-000250
"""

from __future__ import annotations

import argparse
import sys

import torch
import yaml
from safetensors.torch import load_file


def damsm_scores(damsm, images, feats):
    """Per pair (image i, caption i): DAMSM's sentence cosine and word-level relevance R(Q, D) (AttnGAN eq. 10)."""
    import torch.nn.functional as F

    from t2i.losses import word_relevance

    c = damsm.cfg
    regions, code = damsm.image_encoder(images)
    w, s = damsm.text_encoder(feats.words, feats.sentence)
    return F.cosine_similarity(code, s, dim=-1), word_relevance(w, feats.mask, regions.flatten(2), c.gamma1,
                                                                 c.gamma2).diagonal()  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (its config.yaml)")
    p.add_argument("checkpoint", help="checkpoint folder with G.safetensors and D.safetensors")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--micro-step", type=int, default=7, help="which deterministic training batch")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from t2i.models.stackgan import downsample_to
    from t2i.text import TextEncoder, default_cache_dir
    from t2i.train import Batches, DataConfig, GANFamily, TrainConfig, _from_dict, mismatch_index

    rec = yaml.safe_load(open(f"{args.run}/config.yaml"))
    tcfg = _from_dict(TrainConfig, rec["train"], "train")
    tcfg.init_from = None
    fam = GANFamily(rec["family"], rec["model"], tcfg)
    G, D = fam.modules["G"], fam.modules["D"]
    G.load_state_dict(load_file(f"{args.checkpoint}/G.safetensors"))
    D.load_state_dict(load_file(f"{args.checkpoint}/D.safetensors"))
    dcfg = _from_dict(DataConfig, rec["data"], "data")
    enc = TextEncoder(dcfg.text_encoder, max_length=dcfg.max_length, cache_dir=default_cache_dir())
    batch = Batches(dcfg, args.batch, 0, 1, 0).get(args.micro_step)
    f = enc.encode(batch["captions"])
    mis, _ = mismatch_index(batch)
    words = f.words[f.mask]
    s_norm, s_std, w_std = f.sentence.norm(dim=1).mean(), f.sentence.std(0).mean(), words.std(0).mean()
    print(
        f"sentence feature: norm {s_norm:.3f}, per-dimension std {s_std:.4f}; word features: per-dimension std "
        f"{w_std:.3f}"
    )
    with torch.no_grad():
        fakes = G(torch.randn(args.batch, fam.cfg.z_dim), f.sentence, f.words, f.mask).images[-D.n :]
        text = D.text(f.sentence, f.words, f.mask)  # what D's stages read (pooled with model.word_pool)
        for i, x in enumerate(fakes):
            real = downsample_to(batch["image"], x.shape[-1])
            for name, img, s in [("real/matching", real, text), ("real/mismatched", real, text[mis]),
                                 ("fake/matching", x, text)]:  # fmt: skip
                cond, uncond = D.stages[i](img, s)
                u = f"  uncond {uncond.mean():+.3f}" if uncond is not None else ""
                res = f"{x.shape[-1]}x{x.shape[-1]}"
                print(f"stage {i} ({res}) {name:16s} cond {cond.mean():+.3f} +- {cond.std():.3f}{u}")
        if any(a is None for a in batch["attributes"]):
            return 0
        import numpy as np

        from t2i.data.shapes import Scene, caption_scene, near_miss

        scenes = [Scene.from_attributes(a) for a in batch["attributes"]]
        real = batch["image"]
        from t2i.text import mirror_caption

        for kind in ("color", "shape", "size", "position", "swap", "mirror"):
            rng = np.random.default_rng(0)
            idx, caps = [], []
            for j, sc in enumerate(scenes):
                if kind == "mirror":  # the image's own caption with left and right swapped, where it names a side
                    if mirror_caption(batch["captions"][j]) != batch["captions"][j]:
                        idx.append(j)
                        caps.append(mirror_caption(batch["captions"][j]))
                    continue
                if kind == "position" and len(sc.objects) != 1 or kind == "swap" and len(sc.objects) != 2:
                    continue
                try:
                    caps.append(caption_scene(near_miss(sc, rng, kind), rng, 1)[0])
                except ValueError:  # e.g. swapping two identical objects
                    continue
                idx.append(j)
            if not idx:
                continue
            miss = enc.encode(caps, cache=False)
            s_true, s_miss = text[idx], D.text(miss.sentence, miss.words, miss.mask)
            row, con = [], []
            for i, stage in enumerate(D.stages):
                r = downsample_to(real[idx], fakes[i].shape[-1])
                row.append(f"{(stage(r, s_true)[0] > stage(r, s_miss)[0]).float().mean():.2f}")
                if stage.c_img is not None:  # train.contrastive_weight: the contrastive heads' cosine, same question
                    ei, et = stage(r, s_true, contrastive=True)[2]
                    em = stage.embed_text(s_miss)
                    con.append(f"{((ei * et).sum(1) > (ei * em).sum(1)).float().mean():.2f}")
            line = f"near miss {kind:8s} (n={len(idx):2d}): D prefers the true caption, per stage: {' / '.join(row)}"
            if con:
                line += f"; contrastive heads: {' / '.join(con)}"
            if fam.damsm is not None:  # the generator's other critic: DAMSM's sentence and word matching scores
                (ts, tw), (ms, mw) = (damsm_scores(fam.damsm.eval(), real[idx], t) for t in (f[idx], miss))
                line += f"; DAMSM: sentence {(ts > ms).float().mean():.2f}, word {(tw > mw).float().mean():.2f}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
