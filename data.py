"""
The data train.py reads, with no download: token-id arrays for train and val.

    load_data('stdlib')     the Python standard library's own .py sources as bytes (vocab 256):
                            deterministic for a given Python installation, split 90/10
    load_data(FILE)         a text file, as bytes
    load_data(FOLDER)       every .txt/.md/.py file below it, sorted by path, as bytes; or, if
                            the folder holds nanoGPT's train.bin / val.bin (uint16 tokens), those,
                            with meta.pkl's vocabulary when there is one
"""
import os
import pickle
import sysconfig
from pathlib import Path

import numpy as np

TEXT_SUFFIXES = ('.txt', '.md', '.py')
STDLIB_CAP = 16 * 2**20  # bytes


def stdlib_bytes(cap=STDLIB_CAP):
    """The Python standard library's own .py files, sorted by path and concatenated: a
    deterministic byte corpus that every Python installation already has."""
    root = sysconfig.get_paths()['stdlib']
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames
                       if d not in ('site-packages', 'dist-packages', 'test', 'tests', 'idle_test')]
        paths += [os.path.join(dirpath, f) for f in filenames if f.endswith('.py')]
    paths.sort(key=lambda p: os.path.relpath(p, root).replace(os.sep, '/'))
    chunks, size = [], 0
    for p in paths:
        chunks.append(Path(p).read_bytes())
        size += len(chunks[-1])
        if size >= cap:
            break
    return b''.join(chunks)[:cap]


def load_data(path):
    """Returns (train, val, vocab_size, decode, prompt): token-id arrays, a function from ids to
    text (None when there is no decoder) and the token a sample starts from (a newline)."""
    as_bytes = lambda ids: bytes(ids).decode('utf-8', errors='replace')
    if os.path.isfile(os.path.join(path, 'train.bin')):  # nanoGPT's prepared tokens
        train = np.memmap(os.path.join(path, 'train.bin'), dtype=np.uint16, mode='r')
        val = np.memmap(os.path.join(path, 'val.bin'), dtype=np.uint16, mode='r')
        meta_path = Path(path, 'meta.pkl')  # nanoGPT's char-level data has one
        meta = pickle.loads(meta_path.read_bytes()) if meta_path.is_file() else {}
        vocab_size = meta.get('vocab_size') or (max(train.max(), val.max()) // 64 + 1) * 64
        if 'itos' in meta:
            decode = lambda ids: ''.join(meta['itos'][i] for i in ids)
            return train, val, int(vocab_size), decode, meta['stoi'].get('\n', 0)
        return train, val, int(vocab_size), None, int(val[0])
    if path == 'stdlib':
        raw = stdlib_bytes()
    elif os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                       if f.endswith(TEXT_SUFFIXES))
        if not files:
            raise ValueError(f'--data={path}: no train.bin and no {"/".join(TEXT_SUFFIXES)} files')
        raw = b''.join(Path(f).read_bytes() for f in files)
    elif os.path.isfile(path):
        raw = Path(path).read_bytes()
    else:
        raise ValueError(f"--data={path}: no such file or folder (or use 'stdlib')")
    ids = np.frombuffer(raw, dtype=np.uint8)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], 256, as_bytes, ord('\n')
