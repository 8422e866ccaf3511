"""`python -m apps`: the mmgan demo on the bundled checkpoints, on 127.0.0.1 (port: GRADIO_SERVER_PORT or 7860)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    from apps.ui import build_ui

    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    # Never share=True: the demo stays on this machine.
    build_ui().launch(server_name="127.0.0.1", server_port=port, share=False)


if __name__ == "__main__":
    main()
