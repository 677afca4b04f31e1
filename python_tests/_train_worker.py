"""Subprocess entry point for the SFT tests: one training run, as a plain process or under torchrun.

    python python_tests/_train_worker.py --data ds.pkl --out run/ --config '{"max_steps": 30, ...}'
    python -m torch.distributed.run --nproc_per_node 2 ... python_tests/_train_worker.py ...

``--data`` is a pickled SFTDataset (built once by the test); the model is ``build_model(preset, dataset.vocab,
seed=...)``, so every process starts from the same weights. ``--sleep-after K --sleep S`` slows the steps after
K down (numerics untouched) so that a test can SIGKILL the run between a checkpoint and the end.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __name__ == "__main__":  # run as a script: make `python_tests` importable for unpickling RaggedPages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class RaggedPages(torch.utils.data.Dataset):
    """Page-wise examples cut to pages of 1..P items (+ <eos>), as real logs have pages of many sizes: micro-
    batches then hold different numbers of target tokens, which the loss weighting must get right."""

    def __init__(self, base) -> None:
        self.base, self.vocab = base, base.vocab

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        history, target = self.base[i]
        levels = self.vocab.levels
        items = (len(target) - 1) // levels
        keep = 1 + (7 * i) % items
        return history, np.concatenate([target[: keep * levels], target[-1:]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="{}", help="SFTConfig fields as JSON")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sleep-after", type=int, default=-1)
    p.add_argument("--sleep", type=float, default=0.0)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from genrec_ext.model import build_model
    from genrec_ext.train.sft import SFTConfig, train_sft

    with open(args.data, "rb") as f:
        dataset = pickle.load(f)
    model = build_model(args.preset, dataset.vocab, seed=args.model_seed)
    config = SFTConfig.from_dict({**json.loads(args.config), "out_dir": args.out})

    def slow_down(step: int, record) -> None:
        if 0 <= args.sleep_after < step:
            time.sleep(args.sleep)

    result = train_sft(model, dataset, config, resume=args.resume, progress=False, callback=slow_down)
    print(json.dumps({"step": result.step, "loss": result.loss}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
