"""Gradio layout of the demo: five tabs over `DemoApp`'s handlers, a queue, and the `/generate` API endpoint."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from apps.demo import EXAMPLES, MAX_CAPTION_CHARS, MAX_IMAGES, REPO, DemoApp

CUSTOM = "custom folder"


def build_ui(app: DemoApp | None = None, comparison_dir: Path = REPO / "docs" / "comparison") -> gr.Blocks:
    app = app or DemoApp()
    slots = app.zoo.names  # one gallery per installed family, plus one for a user-named folder

    def _galleries(results: dict, status: str):
        updates = []
        for name in slots:
            if name in results:
                updates.append(gr.update(value=results[name], visible=True))
            else:
                updates.append(gr.update(value=None, visible=False))
        custom = next((v for k, v in results.items() if k.startswith("custom:")), None)
        updates.append(gr.update(value=custom, visible=custom is not None))
        return [*updates, status]

    def generate_ui(caption, models, num_images, seed, steps, guidance, custom_path):
        models = [m for m in (models or []) if m != CUSTOM]
        return _galleries(*app.generate(caption, models, num_images, seed, steps, guidance, custom_path))

    def generate_api(caption: str, models: list[str], num_images: int, seed: int):
        # Plain values for API clients: one gallery (or None) per family slot, the custom slot, the status line.
        results, status = app.generate(caption, models, num_images, seed)
        custom = next((v for k, v in results.items() if k.startswith("custom:")), None)
        return [*(results.get(name) for name in slots), custom, status]

    with gr.Blocks(title="mmgan: text to image with GANs, VQGAN and diffusion") as demo:
        gr.Markdown(
            "# mmgan\nType a caption; every chosen model draws it from the same seed. "
            "The bundled models were trained on the procedural **Shapes** dataset (64x64): name shapes, colours, "
            "sizes, positions and relations."
        )
        with gr.Tab("Text to image"):
            with gr.Row():
                caption = gr.Textbox(label=f"Caption (at most {MAX_CAPTION_CHARS} characters)", value=EXAMPLES[0],
                                     max_lines=2, scale=4)  # fmt: skip
                go = gr.Button("Generate", variant="primary", scale=1)
            with gr.Row():
                models = gr.CheckboxGroup(slots + [CUSTOM], value=slots, label="Models")
                num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images per model")
                seed = gr.Number(0, precision=0, label="Seed")
            with gr.Accordion("Diffusion / VQGAN settings, your own checkpoint", open=False):
                steps = gr.Slider(2, 100, value=25, step=1, label="Diffusion sampling steps")
                guidance = gr.Slider(1.0, 10.0, value=3.0, step=0.5, label="Classifier-free guidance scale")
                custom_path = gr.Textbox(
                    label="Run or checkpoint folder (tick 'custom folder')", placeholder="runs/shapes_attngan-001"
                )
            gr.Examples(EXAMPLES, inputs=caption)
            status = gr.Markdown()
            with gr.Row():
                galleries = [gr.Gallery(label=name, columns=2, height=420, visible=True) for name in slots]
                galleries.append(gr.Gallery(label="custom folder", columns=2, height=420, visible=False))
            go.click(generate_ui, [caption, models, num_images, seed, steps, guidance, custom_path],
                     [*galleries, status], api_name="generate_ui")  # fmt: skip
            caption.submit(generate_ui, [caption, models, num_images, seed, steps, guidance, custom_path],
                           [*galleries, status], api_name=False)  # fmt: skip
            # The documented API: (caption, models, num_images, seed) -> one gallery per family, then a status line.
            api_btn = gr.Button(visible=False)
            api_btn.click(generate_api, [caption, models, num_images, seed], [*galleries, status], api_name="generate")

        with gr.Tab("Attention"):
            gr.Markdown("AttnGAN attends to the words of the caption while it refines the image: one map per word.")
            with gr.Row():
                a_caption = gr.Textbox(label="Caption", value=EXAMPLES[1], scale=4)
                a_seed = gr.Number(0, precision=0, label="Seed")
                a_go = gr.Button("Show attention", variant="primary")
            a_gallery = gr.Gallery(label="image and per-word attention", columns=6, height=420)
            a_go.click(lambda c, s: app.attention(c, s), [a_caption, a_seed], a_gallery, api_name="attention")

        with gr.Tab("Interpolate"):
            gr.Markdown("Walk from one caption to another with the noise fixed (leave the second caption empty "
                        "to walk between two seeds instead).")  # fmt: skip
            with gr.Row():
                i_a = gr.Textbox(label="From caption", value=EXAMPLES[0])
                i_b = gr.Textbox(label="To caption", value="a small blue circle in the top left corner")
            with gr.Row():
                gans = [n for n in slots if n in ("StackGAN", "AttnGAN")] or slots
                i_model = gr.Dropdown(gans, value=gans[0] if gans else None, label="Model")
                i_steps = gr.Slider(2, 12, value=6, step=1, label="Steps")
                i_seed = gr.Number(0, precision=0, label="Seed")
                i_go = gr.Button("Interpolate", variant="primary")
            i_gallery = gr.Gallery(label="path", columns=6, height=300)
            i_go.click(lambda a, b, s, n, m: app.interpolate(a, b, s, n, m), [i_a, i_b, i_seed, i_steps, i_model],
                       i_gallery, api_name="interpolate")  # fmt: skip

        with gr.Tab("Compare"):
            report = comparison_dir / "report.md"
            grid = comparison_dir / "grid.png"
            if report.is_file():
                gr.Markdown(report.read_text())
            else:
                gr.Markdown(
                    "No comparison report yet: run `t2i compare checkpoints/shapes64/{stackgan,attngan,vqgan,"
                    "diffusion} --out docs/comparison`."
                )
            for png in (
                [grid, *sorted(p for p in comparison_dir.glob("*.png") if p != grid)]
                if comparison_dir.is_dir()
                else []
            ):
                if png.is_file():
                    gr.Image(str(png), label=png.name, interactive=False)

        with gr.Tab("Text GAN"):
            gr.Markdown("Sentences from the SeqGAN generator and its maximum-likelihood baseline. Lower temperature: "
                        "safer, less diverse text.")  # fmt: skip
            names = list(app.textgan_paths)
            with gr.Row():
                t_model = gr.Dropdown(names, value=names[0] if names else None, label="Model")
                t_temp = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature")
                t_n = gr.Slider(1, 50, value=10, step=1, label="Sentences")
                t_seed = gr.Number(0, precision=0, label="Seed")
                t_go = gr.Button("Sample", variant="primary")
            t_out = gr.Textbox(label="Sentences", lines=12)
            t_go.click(lambda m, n, t, s: app.sentences(m, n, t, s), [t_model, t_n, t_temp, t_seed], t_out,
                       api_name="sentences")  # fmt: skip
    # A burst of users queues instead of piling up work on the CPU; a full queue turns new requests away.
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


# Headless Chromium flags for driving the app from a real browser (the browser test, benchmarks/app_screenshot.py).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--headless", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def launch_local(demo: gr.Blocks) -> str:
    """Serve `demo` on a free 127.0.0.1 port without blocking (never shared); -> its URL. Close with demo.close()."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True)
    return f"http://127.0.0.1:{port}/"
