"""A bounded burst on loopback: 20 concurrent gradio_client users, zero failed requests (tiny models)."""

from benchmarks.app_load import run_load


def test_twenty_concurrent_clients_no_failures(tiny_zoo_dirs, tmp_path):
    from apps.demo import DemoApp, ModelZoo
    from apps.ui import build_ui, launch_local

    demo = build_ui(DemoApp(ModelZoo(dict(tiny_zoo_dirs)), textgan_root=tmp_path), comparison_dir=tmp_path)
    url = launch_local(demo)
    try:
        res = run_load(url, clients=20, requests=1, models=["AttnGAN"], num_images=2,
                       timeout=120)  # fmt: skip
    finally:
        demo.close()
    assert res["failed"] == 0, res["failures"]
    assert res["ok"] == 20 and res["p95_s"] > 0
