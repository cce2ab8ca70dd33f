"""Token shards: writer, manifest, and the random-window loader used for training.

On disk (``out_dir``)::

    manifest.json            what is there: splits, shards, token counts per domain, checksums
    train_00000.bin          raw token ids, uint16 (vocab <= 65536) or uint32, no header: np.memmap-able
    train_00000.idx.npy      int64 (documents, 3): start offset, length (incl. <|eos|>), domain index
    val_00000.bin ...

Each document is followed by ``<|eos|>`` and never spans two shards. Every file is written to a
temporary name and renamed when complete, and ``manifest.json`` is written last (and removed before
a rebuild starts), so a manifest never points at partial data.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write, atomic_write_bytes, atomic_write_text, sha256_file

if TYPE_CHECKING:
    import torch

MANIFEST = "manifest.json"
_REPAIR_HINT = "rebuild it with scratchllm data prepare (or restore the files from a good copy)"
FORMAT = "scratchllm-shards"
VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass
class ShardInfo:
    file: str
    index: str
    tokens: int
    documents: int
    domains: dict[str, int]  # tokens per domain
    sha256: str
    index_sha256: str


@dataclass
class ShardWriter:
    """Append documents to ``<split>_NNNNN.bin`` shards of at most ``shard_tokens`` tokens (a longer
    document gets a shard of its own). Use as a context manager: on an exception the open shard's
    temporary file is removed, and a full disk becomes a clear ScratchError.
    """

    out_dir: Path
    split: str
    dtype: np.dtype
    shard_tokens: int
    domains: list[str]
    shards: list[ShardInfo] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self._stack: contextlib.ExitStack | None = None
        self._f: Any = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            if exc is None:
                self._finish(stack)
            else:
                stack.__exit__(exc_type, exc, tb)  # removes the temp file; may raise "disk full"

    def add(self, tokens: np.ndarray, domain: str) -> None:
        n = len(tokens)
        if self._stack is not None and self._count + n > self.shard_tokens:
            stack, self._stack = self._stack, None
            self._finish(stack)
        if self._stack is None:
            self._start()
        d = self.domains.index(domain)
        self._rows.append((self._count, n, d))
        self._per_domain[d] += n
        data = np.ascontiguousarray(tokens, dtype=self.dtype).tobytes()
        self._f.write(data)
        self._hash.update(data)
        self._count += n

    def _name(self) -> str:
        return f"{self.split}_{len(self.shards):05d}"

    def _start(self) -> None:
        self._stack = contextlib.ExitStack()
        self._f = self._stack.enter_context(atomic_write(self.out_dir / f"{self._name()}.bin", "wb"))
        self._hash = hashlib.sha256()
        self._rows: list[tuple[int, int, int]] = []
        self._per_domain = [0] * len(self.domains)
        self._count = 0

    def _finish(self, stack: contextlib.ExitStack) -> None:
        stack.close()  # fsync + rename of the .bin
        name = self._name()
        buf = io.BytesIO()
        np.save(buf, np.array(self._rows, dtype=np.int64).reshape(-1, 3))
        atomic_write_bytes(self.out_dir / f"{name}.idx.npy", buf.getvalue())
        self.shards.append(
            ShardInfo(
                file=f"{name}.bin",
                index=f"{name}.idx.npy",
                tokens=self._count,
                documents=len(self._rows),
                domains={d: n for d, n in zip(self.domains, self._per_domain, strict=True) if n},
                sha256=self._hash.hexdigest(),
                index_sha256=hashlib.sha256(buf.getvalue()).hexdigest(),
            )
        )


def split_summary(shards: list[ShardInfo]) -> dict[str, Any]:
    domains: dict[str, int] = {}
    for s in shards:
        for d, n in s.domains.items():
            domains[d] = domains.get(d, 0) + n
    return {
        "tokens": sum(s.tokens for s in shards),
        "documents": sum(s.documents for s in shards),
        "domains": domains,
        "shards": [s.__dict__ for s in shards],
    }


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(Path(out_dir) / MANIFEST, json.dumps({"format": FORMAT, "version": VERSION, **manifest}, indent=1))


def load_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(directory, manifest) from a data directory or its manifest.json path."""
    path = Path(path)
    if path.is_dir() or path.name != MANIFEST:
        path = path / MANIFEST
    if not path.exists():
        raise ScratchError(
            f"no prepared data at {path.parent} (missing {MANIFEST})",
            "run `scratchllm data prepare --config configs/data/default.toml` first "
            "(an interrupted run leaves no manifest; rerun it)",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchError(f"{path} is not a valid manifest: {e}", "rerun scratchllm data prepare") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ScratchError(f"{path}: unsupported manifest format/version", "rerun scratchllm data prepare")
    return path.parent, manifest


def verify(path: str | Path) -> list[str]:
    """Problems found re-checking every shard against the manifest's sizes and checksums ([] = all good)."""
    root, manifest = load_manifest(path)
    itemsize = np.dtype(manifest["dtype"]).itemsize
    problems = []
    for split, info in manifest["splits"].items():
        for s in info["shards"]:
            for name, digest in ((s["file"], s["sha256"]), (s["index"], s["index_sha256"])):
                p = root / name
                if not p.exists():
                    problems.append(f"{split}: missing {name}")
                elif name == s["file"] and p.stat().st_size != s["tokens"] * itemsize:
                    problems.append(f"{split}: {name} has {p.stat().st_size} bytes, expected {s['tokens'] * itemsize}")
                elif sha256_file(p) != digest:
                    problems.append(f"{split}: {name} checksum mismatch")
    return problems


def iter_documents(path: str | Path, split: str = "train") -> Iterator[tuple[str, np.ndarray]]:
    """(domain, token ids without the trailing <|eos|>) for every document of a split, in shard order."""
    root, manifest = load_manifest(path)
    dtype, domains = np.dtype(manifest["dtype"]), manifest["domains"]
    for s in _split(manifest, split)["shards"]:
        tokens = np.memmap(root / s["file"], dtype=dtype, mode="r") if s["tokens"] else np.zeros(0, dtype)
        for start, length, d in np.load(root / s["index"]):
            yield domains[d], np.asarray(tokens[start : start + length - 1])


def _split(manifest: dict[str, Any], split: str) -> dict[str, Any]:
    if split not in manifest["splits"]:
        raise ScratchError(f"no split {split!r} in the prepared data", f"choose from {', '.join(manifest['splits'])}")
    return manifest["splits"][split]


def _inputs_targets(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) int64 from windows of seq_len + 1 tokens. Both are made contiguous: a strided view as
    the model's input makes the CPU training step measurably slower (about 5% at the 1m preset)."""
    import torch

    data = torch.from_numpy(rows.astype(np.int64))
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()


class ShardDataset:
    """Random fixed-length windows from the shards of one split, for training.

    ``sample_batch`` draws ``batch_size`` windows uniformly over all window start positions (windows
    never cross a shard boundary; they may cross document boundaries, separated by <|eos|>). It is
    deterministic given ``seed``; ``state_dict``/``load_state_dict`` save and restore the RNG and the
    number of batches drawn, so a resumed run continues with exactly the batches it would have seen.
    """

    def __init__(self, path: str | Path, split: str = "train", seed: int = 0) -> None:
        self.root, self.manifest = load_manifest(path)
        self.split = split
        self.dtype = np.dtype(self.manifest["dtype"])
        info = _split(self.manifest, split)
        self.shards = []
        self.shard_files: list[Path] = []  # parallel to self.shards, for error messages
        self._entries = info["shards"]
        for s in info["shards"]:
            p = self.root / s["file"]
            if not p.exists() or p.stat().st_size != s["tokens"] * self.dtype.itemsize:
                raise ScratchError(f"shard {p} is missing or has the wrong size", _REPAIR_HINT)
            if s["tokens"]:
                self.shards.append(np.memmap(p, dtype=self.dtype, mode="r"))
                self.shard_files.append(p)
        self._check_thread: threading.Thread | None = None
        self._problems: list[str] = []
        self.num_tokens = sum(len(s) for s in self.shards)
        self.vocab_size = int(self.manifest["vocab_size"])
        self.eos_id = self.manifest.get("eos_id")
        import torch

        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0
        self._windows_for: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_tokens

    def _window_table(self, seq_len: int) -> np.ndarray:
        if self._windows_for is None or self._windows_for[0] != seq_len:
            counts = np.array([max(0, len(s) - seq_len) for s in self.shards], dtype=np.int64)
            if counts.sum() == 0:
                raise ScratchError(
                    f"the {self.split} split has no shard longer than seq_len + 1 = {seq_len + 1} tokens",
                    "use a shorter seq_len, or prepare more data (larger shard_tokens / more sources)",
                )
            self._windows_for = (seq_len, np.cumsum(counts))
        return self._windows_for[1]

    def sample_batch(
        self, batch_size: int, seq_len: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y): int64 tensors of shape (batch_size, seq_len), y = x shifted by one token."""
        import torch

        cum = self._window_table(seq_len)
        g = generator if generator is not None else self.generator
        picks = torch.randint(int(cum[-1]), (batch_size,), generator=g).numpy()
        shard = np.searchsorted(cum, picks, side="right")
        offset = picks - np.concatenate([[0], cum[:-1]])[shard]
        rows = np.stack([self.shards[s][o : o + seq_len + 1] for s, o in zip(shard, offset, strict=True)])
        self._check_ids(rows, shard, offset)
        self.check_verified(wait=False)
        if generator is None:
            self.batches += 1
        return _inputs_targets(rows)

    # --- integrity: token-id bounds on every read, checksums once per run ------------------------------

    def _check_ids(self, rows: np.ndarray, shard: np.ndarray, offset: np.ndarray) -> None:
        """Refuse a window holding an id outside the vocabulary (only corruption produces one), naming
        the shard and offset, before the model turns it into an unexplained IndexError."""
        if rows.size == 0 or int(rows.max()) < self.vocab_size:
            return
        r, col = map(int, np.argwhere(rows >= self.vocab_size)[0])
        where = int(offset[r]) + col
        path = self.shard_files[int(shard[r])]
        raise ScratchError(
            f"shard {path} is corrupt: token id {int(rows[r, col])} at token offset {where:,} (byte "
            f"{where * self.dtype.itemsize:,}) is outside the vocabulary of {self.vocab_size}",
            f"check the data with `scratchllm data verify {self.root}`, then {_REPAIR_HINT}",
        )

    def start_verification(self) -> None:
        """Hash this split's shards against the manifest in a background thread (once per run: the data
        is read anyway, and hashing releases the GIL); ``check_verified`` reports what it found."""
        if self._check_thread is not None:
            return

        def work() -> None:
            for s in self._entries:
                for name, digest in ((s["file"], s["sha256"]), (s["index"], s["index_sha256"])):
                    try:
                        ok = sha256_file(self.root / name) == digest
                    except OSError as e:
                        self._problems.append(f"cannot read {self.root / name} ({e})")
                        return
                    if not ok:
                        self._problems.append(f"{self.root / name} checksum mismatch (manifest.json says otherwise)")
                        return

        self._check_thread = threading.Thread(target=work, name="shard-verify", daemon=True)
        self._check_thread.start()

    def check_verified(self, wait: bool = True) -> None:
        """Raise if the background checksum pass found a problem; ``wait``: until it has finished."""
        if self._check_thread is None:
            return
        if wait:
            self._check_thread.join()
        if self._problems:
            raise ScratchError(
                f"the {self.split} data is corrupt: {self._problems[0]}",
                f"check it with `scratchllm data verify {self.root}`, then {_REPAIR_HINT}",
            )

    def iter_batches(self, batch_size: int, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every non-overlapping window of every shard, in order (for evaluation); last batch may be short."""
        import torch

        rows: list[np.ndarray] = []
        where: list[tuple[int, int]] = []

        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            stacked = np.stack(rows)
            self._check_ids(stacked, np.array([w[0] for w in where]), np.array([w[1] for w in where]))
            rows.clear()
            where.clear()
            return _inputs_targets(stacked)

        for i, s in enumerate(self.shards):
            for o in range(0, len(s) - seq_len, seq_len):
                rows.append(s[o : o + seq_len + 1])
                where.append((i, o))
                if len(rows) == batch_size:
                    yield batch()
        if rows:
            yield batch()

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "batches": self.batches, "rng_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state["seed"]
        self.batches = state["batches"]
        self.generator.set_state(state["rng_state"])
