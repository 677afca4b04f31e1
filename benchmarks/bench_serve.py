"""`genrec serve` on loopback: request latency (p50 / p90 / p99) and throughput at 1 / 16 / 64 concurrent clients,
with the server batching queued requests into one beam search (the default, --max-batch 64) against the same
server answering one request per search (--max-batch 1), in the same run.

    python benchmarks/bench_serve.py                 # CPU
    python benchmarks/bench_serve.py --device cuda

The server is a real `genrec serve` process (its own interpreter, --server-threads torch threads); the clients
are threads of this process, each with one keep-alive connection, sending `POST /recommend` back to back for
--seconds per concurrency level after a warm-up. Requests: a 20-item history drawn from the catalogue, top_k 10,
beam 50. Model and catalogue as in bench_beam_search.py: the `tiny` preset, 10k items, 3 levels of 256 codes
(random SIDs: latency does not depend on what the model learnt). mean_batch: requests per beam search, from the
server's /health counters.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import benchmark_parser, cpu_model, parse_ints, print_row, write_table  # noqa: E402

from genrec_ext.data import ItemCatalog  # noqa: E402
from genrec_ext.model import build_model  # noqa: E402
from genrec_ext.sid import SIDTable, SIDVocab  # noqa: E402


def write_service(directory: Path, items: int, preset: str) -> None:
    levels = (256, 256, 256)
    rng = np.random.default_rng(0)
    sids = np.unique(np.stack([rng.integers(0, k, items * 2) for k in levels], 1), axis=0)[:items]
    sids = sids[rng.permutation(len(sids))]
    ids = np.arange(len(sids), dtype=np.int64) + 1_000_000
    ItemCatalog.from_table(pa.table({"item_id": ids, "title": [f"item {i}" for i in ids]})).save(directory / "data")
    SIDTable(sids, ids.tolist(), list(levels)).save(directory / "sids")
    build_model(preset, SIDVocab(levels), seed=0).save_pretrained(directory / "model")


def start_server(directory: Path, args, max_batch: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.server_threads)}
    cmd = [sys.executable, "-m", "genrec_ext.cli", "serve", "--model", str(directory / "model"), "--sids",
           str(directory / "sids"), "--items", str(directory / "data"), "--port", "0", "--beam", "50",
           "--max-batch", str(max_batch), "--device", args.device]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"genrec serve did not start: {line}{proc.stdout.read()}")
    return proc, line.split("listening on ")[1].split()[0]


def call(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> dict:
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {payload}")
    return payload


def run_clients(host: str, port: int, clients: int, seconds: float, histories: list[list[int]]) -> list[float]:
    """Latencies (s) of every request that started within ``seconds``, over ``clients`` keep-alive clients."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        try:
            call(conn, "POST", "/recommend", {"history": histories[c % len(histories)]})  # connect + warm
        except Exception:
            start.abort()  # the others fail fast instead of waiting for this client
            raise
        start.wait()
        stop = time.perf_counter() + seconds
        i = c
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            call(conn, "POST", "/recommend", {"history": histories[i % len(histories)], "top_k": 10})
            latencies[c].append(time.perf_counter() - t0)
            i += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    return [x for per in latencies for x in per]


def main() -> None:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--clients", type=parse_ints, default=[1, 16, 64])
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per concurrency level")
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--server-threads", type=int, default=torch.get_num_threads(),
                    help="torch threads of the server process")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_service(directory, args.items, args.preset)
        histories = [(rng.choice(args.items, args.history, replace=False) + 1_000_000).tolist() for _ in range(512)]
        for max_batch in (64, 1):
            proc, url = start_server(directory, args, max_batch)
            host, port = url.removeprefix("http://").split(":")
            try:
                health = http.client.HTTPConnection(host, int(port), timeout=30)
                for clients in args.clients:
                    before = call(health, "GET", "/health")
                    started = time.perf_counter()
                    lat = np.array(run_clients(host, int(port), clients, args.seconds, histories)) * 1e3
                    wall = time.perf_counter() - started
                    after = call(health, "GET", "/health")
                    searches = after["searches"] - before["searches"]
                    answered = after["requests_answered"] - before["requests_answered"]
                    row = {"server": "batched (--max-batch 64)" if max_batch > 1 else "one per search (--max-batch 1)",
                           "clients": clients, "requests": len(lat), "p50_ms": float(np.percentile(lat, 50)),
                           "p90_ms": float(np.percentile(lat, 90)), "p99_ms": float(np.percentile(lat, 99)),
                           "mean_ms": float(lat.mean()), "req_per_s": len(lat) / wall,
                           "mean_batch": answered / max(searches, 1)}
                    rows.append(row)
                    print_row(row)
                health.close()
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    machine = (torch.cuda.get_device_name() if args.device == "cuda" else
               f"{cpu_model()}; server: {args.server_threads} torch threads, clients: threads of the benchmark process")
    note = (f"{machine} (torch {torch.__version__}); `genrec serve` on loopback, `{args.preset}` preset, {args.items:,} "
            f"items (3 levels of 256 codes), {args.history}-item histories, top_k 10, beam 50, {args.seconds:g} s "
            "per row after a warm-up; latency = one POST /recommend round trip seen by the client.")
    write_table(rows, ["server", "clients", "requests", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "req_per_s",
                       "mean_batch"], "genrec serve: latency and throughput on loopback",
                args.out / f"serve_{args.device}", note)


if __name__ == "__main__":
    main()
