"""Speed of `compscale data prepare` against a bare `tokenizers` loop, in the same run.

A made-up jsonl corpus is tokenized with one BPE (trained first, untimed) three ways:
1. bare: `Tokenizer.encode_batch` over the records' texts, already in memory, one thread
   (`RAYON_NUM_THREADS=1`): the ceiling for one core;
2. `prepare_shards(..., workers=1)`: reading, JSON parsing, hashing, tokenizing in a worker
   process, writing parts and joining them into train.bin/val.bin, all timed;
3. the same with `workers=2`.
It prints throughput (text MB/s), prepare's ratio to bare per worker (the target is >= 0.8) and its
speed-up from 1 to 2 workers (bounded by the free cores: the reading process needs some too). On a
machine shared with other work, wall time says little; the CPU seconds (this process and its
finished children) say what each way costs.

    .venv/bin/python benchmarks/prepare_speed.py                  # 16 MB, bpe:4096
    .venv/bin/python benchmarks/prepare_speed.py --mb 64 --vocab 32000 --repeats 3
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its thread pool

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

from workers.prepare import prepare_shards

BATCH = 1000  # records per encode_batch call in the bare loop


def made_up_texts(megabytes: float, seed: int = 0) -> list[str]:
    """Paragraphs of made-up words with punctuation and numbers, about `megabytes` of UTF-8."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ru", "te", "sa", "no", "vi", "ze", "pu", "an", "ing", "th"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(20000)]
    texts, size = [], 0
    while size < megabytes * 1e6:
        sentences = [
            " ".join(rng.choices(words, k=rng.randint(4, 20))).capitalize()
            + rng.choice([".", ",", "!", f" {rng.randint(0, 9999)}."])
            for _ in range(rng.randint(3, 30))
        ]
        texts.append(" ".join(sentences))
        size += len(texts[-1])
    return texts


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the pool's workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run) -> tuple[float, float]:
    """(wall, CPU) seconds of `run()`."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    run()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def bare_loop(tokenizer_json: str, texts: list[str]) -> None:
    tokenizer = Tokenizer.from_file(tokenizer_json)
    for first in range(0, len(texts), BATCH):
        tokenizer.encode_batch(texts[first : first + BATCH])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=16, help="corpus size, MB of text")
    parser.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs each")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    texts = made_up_texts(args.mb)
    megabytes = sum(len(text.encode()) for text in texts) / 1e6
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        corpus = root / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
        prepare_shards(corpus, root / "trained", tokenizer=f"bpe:{args.vocab}", workers=1)
        tokenizer_json = str(root / "trained" / "tokenizer.json")
        runs = {
            "bare": lambda: bare_loop(tokenizer_json, texts),
            **{
                workers: lambda workers=workers: prepare_shards(
                    corpus,
                    root / "out",
                    tokenizer=tokenizer_json,
                    workers=workers,
                    part_bytes=1 << 20,
                )
                for workers in (1, 2)
            },
        }
        seconds = {key: [] for key in runs}
        for _ in range(args.repeats):  # interleaved, so a busy moment hits each alike
            for key, run in runs.items():
                seconds[key].append(timed(run))
    wall = {key: min(wall for wall, _ in values) for key, values in seconds.items()}
    cpu = {key: min(cpu for _, cpu in values) for key, values in seconds.items()}
    print(f"corpus: {megabytes:.1f} MB of text in {len(texts)} records, bpe:{args.vocab}")
    print(f"load average before: {load:.1f} on {os.cpu_count()} cores")
    for key, label in (
        ("bare", "bare encode_batch, 1 thread"),
        (1, "prepare, 1 worker"),
        (2, "prepare, 2 workers"),
    ):
        print(f"{label:28s} {megabytes / wall[key]:6.2f} MB/s wall, {cpu[key]:6.2f} CPU s")
    print(f"prepare / bare, 1 worker, wall: {wall['bare'] / wall[1]:.2f} (target >= 0.8)")
    print(f"prepare / bare, per CPU second: {cpu['bare'] / cpu[1]:.2f}")
    print(f"scaling 1 -> 2 workers, wall: {wall[1] / wall[2]:.2f}x")


if __name__ == "__main__":
    main()
