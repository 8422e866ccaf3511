import pytest
import torch


@pytest.fixture(scope="session")
def tiny_zoo_dirs(tmp_path_factory):
    """Tiny StackGAN and AttnGAN checkpoints (16x16, untrained) exported the way training exports them."""
    from t2i.models.attngan import AttnGANConfig, AttnGANGenerator
    from t2i.models.stackgan import StackGANConfig, StackGANGenerator
    from t2i.pipelines import export_generator

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    s_cfg = StackGANConfig(resolution=16, stage1_resolution=8, z_dim=8, cond_dim=8, ngf=4, ndf=4, res_blocks=1)
    export_generator(root / "stackgan", "stackgan", StackGANGenerator(s_cfg), s_cfg)
    a_cfg = AttnGANConfig(stages=[8, 16], z_dim=8, cond_dim=8, ngf=4, ndf=4, res_blocks=1)
    export_generator(root / "attngan", "attngan", AttnGANGenerator(a_cfg), a_cfg)
    return {"StackGAN": root / "stackgan", "AttnGAN": root / "attngan"}


@pytest.fixture
def app(tiny_zoo_dirs, tmp_path):
    from apps.demo import DemoApp, ModelZoo

    return DemoApp(ModelZoo(dict(tiny_zoo_dirs)), textgan_root=tmp_path / "no-textgan")
