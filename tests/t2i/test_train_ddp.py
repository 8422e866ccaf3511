"""Two CPU processes (torchrun, gloo) train the same tiny recipe; DDP must keep their generators identical."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import sys, torch
from accelerate import PartialState
from safetensors.torch import save_file
from t2i.train import load_recipe, train
import t2i.train as T

out, recipe_path, *overrides = sys.argv[1:]
captured = {}
orig = T.save_checkpoint
def spy(run_dir, step, fam, state, keep):  # grab the family to read this rank's weights at the end
    captured["fam"] = fam
    return orig(run_dir, step, fam, state, keep)
T.save_checkpoint = spy
T.GANFamily.after_step_orig = T.GANFamily.after_step
def after(self, step):
    captured["fam"] = self
    self.after_step_orig(step)
T.GANFamily.after_step = after
run = train(load_recipe(recipe_path, overrides), runs_dir=out + "/runs", progress=False)
fam, rank = captured["fam"], PartialState().process_index
sd = {k: v.detach().contiguous() for k, v in fam.acc.unwrap_model(fam.p["G"]).state_dict().items()}
save_file(sd, f"{out}/rank{rank}.safetensors")
sd = {k: v.detach().contiguous() for k, v in fam.acc.unwrap_model(fam.p["D"]).state_dict().items()}
save_file(sd, f"{out}/D-rank{rank}.safetensors")
print("world", PartialState().num_processes, "run", run)
"""


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["model.word_pool=true", "train.contrastive_mirror=1"]],
                         ids=["plain", "word_pool"])  # fmt: skip
def test_two_processes_agree(tmp_path, extra):
    (tmp_path / "worker.py").write_text(WORKER)
    overrides = ["model.resolution=16", "model.stage1_resolution=8", "model.ngf=4", "model.ndf=4", "model.z_dim=4",
                 "model.cond_dim=4", "model.res_blocks=1", "data.size=16", "data.length=32", "train.batch_size=4",
                 "train.max_steps=2", "train.checkpoint_every=2", "train.sample_every=100",
                 "train.eval_every=0", *extra]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    recipe = str(ROOT / "configs/t2i/shapes_stackgan.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(tmp_path / "worker.py"), str(tmp_path), recipe, *overrides]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world 2" in res.stdout
    a, b = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The discriminators too (with word_pool, D's pool runs outside DDP's forward: its gradients must still be synced)
    a_d, b_d = load_file(str(tmp_path / "D-rank0.safetensors")), load_file(str(tmp_path / "D-rank1.safetensors"))
    assert a_d.keys() == b_d.keys() and (any(k.startswith("pool.") for k in a_d) == bool(extra))
    for k in a_d:
        assert torch.equal(a_d[k], b_d[k]), k
    # ... and training moved them away from the initial weights (the loop seeds torch with train.seed=0).
    from t2i.models.stackgan import StackGANConfig, build_stackgan

    torch.manual_seed(0)
    G0, _ = build_stackgan(StackGANConfig(resolution=16, stage1_resolution=8, ngf=4, ndf=4, z_dim=4, cond_dim=4,
                                          res_blocks=1, word_pool=bool(extra)))  # fmt: skip
    assert any(not torch.equal(v, a[k]) for k, v in G0.state_dict().items() if v.is_floating_point())
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoints/step-000002").is_dir()  # one run folder for both ranks
