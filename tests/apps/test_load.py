"""A bounded burst on loopback: 20 concurrent gradio_client users, zero failed requests (tiny models)."""

import socket

from benchmarks.app_load import run_load


def test_twenty_concurrent_clients_no_failures(tiny_zoo_dirs, tmp_path):
    from apps.demo import DemoApp, ModelZoo
    from apps.ui import build_ui

    demo = build_ui(DemoApp(ModelZoo(dict(tiny_zoo_dirs)), textgan_root=tmp_path), comparison_dir=tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True)
    try:
        res = run_load(f"http://127.0.0.1:{port}/", clients=20, requests=1, models=["AttnGAN"], num_images=2,
                       timeout=120)  # fmt: skip
    finally:
        demo.close()
    assert res["failed"] == 0, res["failures"]
    assert res["ok"] == 20 and res["p95_s"] > 0
