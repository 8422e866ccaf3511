"""Bounded load test of the demo app: N concurrent gradio_client users on loopback, each making R `/generate` calls.

Reports failures and latency percentiles; exits non-zero on any failed request. Only 127.0.0.1 is ever contacted.

    python benchmarks/app_load.py --clients 20 --requests 2 --models StackGAN AttnGAN --num-images 4
    python benchmarks/app_load.py --url http://127.0.0.1:7860/ ...     # against an app that is already running
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np


def run_load(url: str, clients: int, requests: int, models: list[str], num_images: int, timeout: float = 600) -> dict:
    from gradio_client import Client

    if not url.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        raise SystemExit(f"refusing to load-test {url}: loopback addresses only")
    latencies, failures, lock = [], [], threading.Lock()
    deadline = time.monotonic() + timeout

    def user(i: int) -> None:
        client = Client(url, verbose=False)
        for r in range(requests):
            if time.monotonic() > deadline:
                with lock:
                    failures.append(f"client {i}: deadline passed before request {r}")
                return
            t0 = time.perf_counter()
            try:
                out = client.predict(f"a small red circle number {i}", models, num_images, i * 100 + r,
                                     api_name="/generate")  # fmt: skip
                if not out or not out[-1]:
                    raise RuntimeError("empty response")
                with lock:
                    latencies.append(time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    failures.append(f"client {i} request {r}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=user, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies or [float("nan")])
    return {
        "clients": clients,
        "requests": clients * requests,
        "ok": len(latencies),
        "failed": len(failures),
        "failures": failures[:10],
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "max_s": float(lat.max()),
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running app (default: launch the bundled app on a free port)")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=2, help="requests per client")
    p.add_argument("--models", nargs="+", default=["StackGAN", "AttnGAN"])
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = None
    url = args.url
    if url is None:
        from apps.ui import build_ui, launch_local

        demo = build_ui()
        url = launch_local(demo)
    try:
        res = run_load(url, args.clients, args.requests, args.models, args.num_images)
    finally:
        if demo is not None:
            demo.close()
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
