"""Checkpoint files: the safetensors of a checkpoint directory, read and written.

The weights are ``model.safetensors``, or shards ``model-00001-of-0000N.safetensors`` with
``model.safetensors.index.json`` (the same index layout as Hugging Face), read lazily through
memory-mapped handles. Nothing but safetensors is read: a pickle checkpoint is refused, so
nothing in a checkpoint is ever executed. A save writes into a temporary directory next to the
target and swaps it into place (``write_atomically``), so a killed save leaves a complete
checkpoint at the target, the previous one or the new one."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager, suppress
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from archcomposer.errors import CheckpointError

SPEC_FILE = "spec.yaml"
HF_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
#: Files a save replaces; anything else in an existing target directory (a tokenizer) is kept.
CHECKPOINT_FILES = {SPEC_FILE, HF_CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Loads of at least this many bytes show a progress line on stderr.
PROGRESS_MIN_BYTES = 1 << 30


# ---------------------------------------------------------------------------------------------
# reading


class TensorFiles:
    """The tensors of a checkpoint directory (one safetensors file or an index of shards), read
    lazily through memory-mapped ``safe_open`` handles. Every file is checked as it is opened: a
    shard the index names must be a regular file of the directory, and a header safetensors cannot
    parse is a ``CheckpointError`` naming the file."""

    def __init__(self, directory: Path):
        self.directory = directory
        index, single = directory / INDEX_FILE, directory / WEIGHTS_FILE
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}
        if os.path.lexists(index):
            weight_map = read_index(index)
            for file in sorted(set(weight_map.values())):
                _require_regular_file(directory / file, f"{index} names shard {file!r}, which")
            self.file_of = {name: directory / file for name, file in weight_map.items()}
        elif os.path.lexists(single):
            _require_regular_file(single, str(single))
            self.file_of = {name: single for name in self._open(single).keys()}
        else:
            raise CheckpointError(f"{directory}: no {WEIGHTS_FILE} or {INDEX_FILE}")
        self.names = list(self.file_of)
        self._info: dict[str, tuple[tuple[int, ...], torch.dtype | None, str]] = {}
        for file in sorted(set(self.file_of.values())):
            handle = self._open(file)
            for name in _read(file, handle.keys):
                if self.file_of.get(name) == file:
                    sl = _read(file, handle.get_slice, name)
                    dtype_name = _read(file, sl.get_dtype)
                    self._info[name] = (tuple(_read(file, sl.get_shape)), _DTYPES.get(dtype_name), dtype_name)
        absent = [n for n in self.names if n not in self._info]
        if absent:
            raise CheckpointError(f"{index} maps {len(absent)} tensor(s) to shards that do not hold them: "
                                  f"{', '.join(absent)}")

    def _open(self, file: Path):
        if file not in self._handles:
            self._handles[file] = self._stack.enter_context(_read(file, safe_open, str(file), framework="pt",
                                                                  device="cpu"))
        return self._handles[file]

    def __contains__(self, name: str) -> bool:
        return name in self._info

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info[name][0]

    def dtype(self, name: str) -> torch.dtype | None:
        """The tensor's torch dtype; None for a safetensors dtype torch has no equivalent of here."""
        return self._info[name][1]

    def dtype_name(self, name: str) -> str:
        """The dtype as the file names it (``F32``, ``BF16``, ``I64``...)."""
        return self._info[name][2]

    def nbytes(self, name: str) -> int:
        shape, dtype, _ = self._info[name]
        return torch.Size(shape).numel() * (dtype.itemsize if dtype is not None else 1)

    def get(self, name: str) -> torch.Tensor:
        file = self.file_of[name]
        return _read(file, self._open(file).get_tensor, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64,
           "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool, "C64": torch.complex64,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
#: The dtypes a floating-point weight may be stored in (a cast to the model's dtype is exact or rounds).
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def _read(file: Path, call: Callable, *args, **kwargs):
    """``call`` on a safetensors file; safetensors raises its own error types for bad headers and
    data, each a ``CheckpointError`` naming the file here."""
    try:
        return call(*args, **kwargs)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file: {exc}") from None


def _require_regular_file(path: Path, what: str) -> None:
    if not path.exists():
        raise CheckpointError(f"{what} does not exist")
    if not path.is_file():  # a directory, a FIFO or a device: a read could block or never end
        raise CheckpointError(f"{what} is not a regular file")


def read_json(path: Path, what: str) -> Any:
    """A JSON file of a checkpoint (``config.json``, the shard index), parsed; ``what`` it should be
    names the expectation in the ``CheckpointError`` for a file that is not UTF-8 JSON."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror}); expected {what}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {exc.start} is {raw[exc.start:exc.start + 1]!r}); "
                              f"expected {what}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError; an integer of 4,300+ digits; deep nesting
        raise CheckpointError(f"{path}: not valid JSON ({exc}); expected {what}") from None


def read_index(index: Path) -> dict[str, str]:
    """A shard index's ``weight_map`` (tensor name -> shard file name). Each shard is a file of the
    index's own directory, named alone: a name with a directory part (``../x.safetensors``, an
    absolute path, ``sub/x.safetensors``) is refused, so an index cannot make a load read files
    outside its checkpoint."""
    expected = "a safetensors index: a JSON object whose weight_map maps tensor names to shard file names"
    data = read_json(index, expected)
    if not isinstance(data, dict):
        raise CheckpointError(f"{index}: a JSON {json_type(data)}; expected {expected}")
    if "weight_map" not in data:
        raise CheckpointError(f"{index}: no weight_map; expected {expected}")
    weight_map = data["weight_map"]
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map is a JSON {json_type(weight_map)}; expected an object "
                              f"mapping tensor names to shard file names")
    not_names = [f"{name!r}: {_short(file)}" for name, file in weight_map.items() if not isinstance(file, str)]
    if not_names:
        raise CheckpointError(f"{index}: weight_map maps {len(not_names)} tensor(s) to something other than a "
                              f"shard file name (a string): {_first(not_names)}")
    outside = sorted({file for file in weight_map.values() if not _plain_file_name(file)})
    if outside:
        raise CheckpointError(f"{index}: weight_map names shard(s) {_first([repr(f) for f in outside])}, which are "
                              f"not files of the checkpoint directory; a shard is named by its file name alone")
    return weight_map


def _plain_file_name(name: str) -> bool:
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def refuse_pickle(path: Path) -> None:
    found = [path] if path.is_file() else sorted(path.iterdir()) if path.is_dir() else []
    pickles = [p for p in found if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(
            f"{pickles[0]} is a pickle checkpoint; archcomposer reads only safetensors, because unpickling can "
            f"execute arbitrary code. Convert it once, in an environment you trust, e.g.:\n"
            f"  python -c \"import torch; from safetensors.torch import save_file; "
            f"save_file(torch.load('{pickles[0].name}', weights_only=True), 'model.safetensors', "
            f"metadata={{'format': 'pt'}})\"\n"
            f"or load it with transformers and save_pretrained it (transformers writes safetensors)")


# ---------------------------------------------------------------------------------------------
# writing


def parse_size(size: int | str) -> int:
    """``max_shard_size``: a number of bytes (an int) or a size such as ``"500MB"`` or ``"5GiB"``."""
    expected = "expected a number of bytes (an int) or a size such as '500MB' or '5GB'"
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise CheckpointError(f"max_shard_size={size!r} (a {type(size).__name__}): {expected}")
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", size, flags=re.IGNORECASE | re.ASCII)
        if match is None:
            raise CheckpointError(f"max_shard_size={size!r}: {expected}")
        unit = (match.group(2) or "B").upper()
        scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                 "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
        value = int(Fraction(match.group(1)) * scale)  # exact: '1.1GB' is 1,100,000,000 bytes
    if value <= 0:
        raise CheckpointError(f"max_shard_size={size!r} must be positive")
    return value


def write_tensors(directory: Path, tensors: dict[str, torch.Tensor], max_shard_size: int,
                  metadata: dict[str, str], progress: Progress | None = None) -> None:
    """Write ``tensors`` as one safetensors file, or as shards of at most ``max_shard_size`` bytes
    with an index; ``progress`` advances as each file is written (safetensors writes a file at once)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous().cpu()
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_FILE), metadata=metadata)
        _advance(progress, shards[0])
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / file), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
        _advance(progress, shard)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _advance(progress: Progress | None, shard: dict[str, torch.Tensor]) -> None:
    if progress is not None:
        progress.advance(sum(t.numel() * t.element_size() for t in shard.values()))


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a fresh directory beside ``target`` and swap it into place; return
    ``target``. A symlink is followed: its target is replaced and the link stays a link.

    At every moment, the process killed or not, ``target`` holds a complete checkpoint, the
    previous one or the new one: the new directory is written and fsynced under a temporary name
    (``.NAME.saving-XXXXXXXX``), then exchanged with the old one in one ``renameat2(RENAME_EXCHANGE)``
    (Linux 3.15+, on ext4, XFS, Btrfs, tmpfs...). Where the filesystem cannot exchange, the old one
    is renamed aside (``.NAME.old-XXXXXXXX``, the same suffix) and the new one into place; a kill
    between those two renames leaves ``target`` absent, and the next save or load of ``target``
    renames the complete new directory into place (``recover``). Each save deletes what killed
    saves of the same target left beside it; a temporary directory is held with ``flock`` while
    its save runs, so a concurrent save's is never touched. Any ``OSError`` (a full disk, a
    read-only parent) is a ``CheckpointError``, with the previous checkpoint left intact and no
    temporary directory behind."""
    given, target = target, _real_target(target)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CheckpointError(f"cannot save to {target}: {_file_above(parent)} is a file, not a directory") \
            from None
    except OSError as exc:
        raise CheckpointError(f"cannot save to {target}: cannot create {parent}: {exc.strerror}") from None
    try:
        with _locked(parent):
            _recover(target, clean=True)
            staging = _new_staging(target)
            live = _hold(staging)
    except OSError as exc:
        raise CheckpointError(f"cannot save to {target}: {exc}") from None
    state = "the checkpoint there is unchanged" if target.is_dir() else "nothing was written there"
    try:
        try:
            with _locked(parent):  # not between the two renames of another save's swap
                if target.is_dir():
                    os.chmod(staging, stat.S_IMODE(target.stat().st_mode))
                    _keep_other_files(target, staging)
            write(staging)
            _fsync_tree(staging)
            cwd = _cwd_within(target)
            with _locked(parent):
                garbage = _swap(staging, target)
        except (OSError, SafetensorError) as exc:  # safetensors reports a failed write (ENOSPC) as its own error
            raise CheckpointError(f"saving {target} failed ({exc}); {state}") from None
    except BaseException:
        _remove(staging)
        raise
    finally:
        os.close(live)
    if cwd is not None:  # the process was in the replaced directory: into the new one
        os.chdir(target / cwd if (target / cwd).is_dir() else target)
    _remove(garbage)
    _fsync_directory(parent)
    return given


#: What a save leaves beside its target while it runs: ``.NAME.saving-XXXXXXXX`` (being written;
#: after an exchange, the previous checkpoint being deleted) and ``.NAME.old-XXXXXXXX`` (the previous
#: checkpoint, between the two renames where the filesystem cannot exchange).
_LEFTOVER = r"\.{name}\.(saving|old)-([0-9a-f]{{8}})"


def recover(target: Path) -> bool:
    """For a load of ``target``: put back the checkpoint that a save killed between its two
    renames left beside it (see ``write_atomically``); deletes nothing. Returns whether it did."""
    target = Path(os.path.realpath(target))
    if not target.parent.is_dir():
        return False
    with _locked(target.parent):
        return _recover(target, clean=False)


def _recover(target: Path, *, clean: bool) -> bool:
    """Put back the checkpoint that a save killed between its two renames left beside ``target``
    (target absent, ``.NAME.old-X`` and the complete ``.NAME.saving-X`` present: the new one goes
    into place) and, with ``clean``, delete every other leftover of killed saves of ``target``.
    Leftovers of saves still running (held with ``flock``) are never touched. Call it holding the
    parent's lock. Returns whether a checkpoint was put back."""
    pattern = re.compile(_LEFTOVER.format(name=re.escape(target.name)))
    stale: dict[str, dict[str, Path]] = {"saving": {}, "old": {}}
    for entry in target.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match is not None and _stale(entry):
            stale[match.group(1)][match.group(2)] = entry
    restored = not os.path.lexists(target) and bool(stale["old"])
    if restored:  # the old one was renamed aside only once the new one was complete and fsynced
        suffix = min(stale["old"])
        new = stale["saving"].pop(suffix, None)
        os.rename(new if new is not None else stale["old"].pop(suffix), target)
    if clean:
        for entry in [*stale["saving"].values(), *stale["old"].values()]:
            _remove(entry)
    return restored


def _real_target(target: Path) -> Path:
    """The directory a save writes: symlinks resolved (a link to a checkpoint stays a link and its
    target is replaced), ``.`` and ``..`` resolved (``save_pretrained(".")``)."""
    real = Path(os.path.realpath(target))
    if real.parent == real:
        raise CheckpointError(f"cannot save to {target}: a checkpoint is a directory that can be replaced, not the "
                              f"filesystem root")
    if os.path.lexists(real) and not real.is_dir():
        link = f" (the symlink {target} points to it)" if real != Path(target).absolute() else ""
        raise CheckpointError(f"cannot save to {target}: {real} exists and is not a directory{link}")
    return real


def _cwd_within(directory: Path) -> Path | None:
    """The working directory relative to ``directory`` if it is inside it (None otherwise)."""
    try:
        cwd = Path(os.getcwd())
    except OSError:
        return None
    return cwd.relative_to(directory) if cwd == directory or directory in cwd.parents else None


def _file_above(path: Path) -> Path:
    """The nearest existing ancestor of ``path`` (or itself): the file that stops a mkdir."""
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def _new_staging(target: Path) -> Path:
    while True:
        staging = target.parent / f".{target.name}.saving-{secrets.token_hex(4)}"
        try:
            os.mkdir(staging)
            return staging
        except FileExistsError:
            continue


def _hold(directory: Path) -> int:
    """An open descriptor of ``directory`` with an exclusive ``flock``: while it is open, the
    directory belongs to a running save (the lock goes with the process, even a killed one)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    _flock(fd, blocking=True)
    return fd


def _stale(path: Path) -> bool:
    """Whether no running save holds ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return True  # not a directory: no save holds it
    try:
        return _flock(fd, blocking=False)
    finally:
        os.close(fd)


def _flock(fd: int, *, blocking: bool) -> bool:
    """Lock ``fd`` exclusively; False if another process holds it. Where the filesystem has no
    ``flock`` (some network filesystems), it locks nothing: saves there must not overlap."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return True
        raise
    return True


@contextmanager
def _locked(directory: Path):
    """Hold ``directory``'s lock: recovering, cleaning and swapping the checkpoints in it are
    one at a time (each takes milliseconds)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _flock(fd, blocking=True)
        yield
    finally:
        os.close(fd)


def _swap(staging: Path, target: Path) -> Path | None:
    """Put ``staging`` at ``target``; return what is left to delete (the previous checkpoint)."""
    if not os.path.lexists(target):
        os.rename(staging, target)
        return None
    if _exchange(staging, target):
        return staging
    old = target.parent / f".{target.name}.old-{staging.name.rpartition('-')[2]}"
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    return old


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); False where the kernel, the C
    library or the filesystem cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+, musl 1.2.3+
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _keep_other_files(target: Path, staging: Path) -> None:
    """Carry over what the save does not write (a tokenizer), as hard links where it can."""
    for item in target.iterdir():
        if item.name not in CHECKPOINT_FILES and not SHARD_PATTERN.fullmatch(item.name):
            _copy(item, staging / item.name)


def _remove(path: Path | None) -> None:
    if path is None or not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


def _copy(source: Path, dest: Path) -> None:
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, dest, symlinks=True, copy_function=_link_or_copy)
    elif source.is_symlink():
        os.symlink(os.readlink(source), dest)
    else:
        _link_or_copy(source, dest)


def _link_or_copy(source, dest) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _fsync_tree(directory: Path) -> None:
    """Everything ``write`` made reaches the disk before the swap makes it the checkpoint."""
    for file in directory.rglob("*"):
        if file.is_file() and not file.is_symlink():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        elif file.is_dir() and not file.is_symlink():
            _fsync_directory(file)
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# progress


class Progress:
    """A one-line progress report on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, total: int, *, enabled: bool):
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.done, self.last = 0, 0.0

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.1 or self.done >= self.total):
            self.last = now
            sys.stderr.write(f"\r{self.label}: {100 * self.done // self.total:3d}% "
                             f"({self.done / 2**30:.2f}/{self.total / 2**30:.2f} GiB)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
