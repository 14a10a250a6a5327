#!/usr/bin/python3
"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/, committed; a few KiB).

    /usr/bin/python3 tests/fuzz/make_corpus.py   (Debian python3-numpy)

npy/: valid 3-d and 4-d float32, float16 and bfloat16 ('<u2', '<V2', '|V2') arrays, an empty
array, a 0-d array, version 2.0 and 3.0 headers, and files the reader must reject: Fortran
order, big endian, bad magic, bad version, a header longer than the file, truncated data, a
malformed dict. config/: .ini files like configs/*.ini, with comments, a [section], unknown
keys, bad values, list and flag-list options.
"""
import io
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def npy(arr, version=None):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version, allow_pickle=False)
    return buf.getvalue()


def raw_npy(header, data=b"", major=1):
    """A .npy file with this header dict text (padded to 64 bytes as NumPy does)."""
    hdr = header.encode("latin1")
    pre = 8 + (2 if major == 1 else 4)
    pad = (-(pre + len(hdr) + 1)) % 64
    hdr += b" " * pad + b"\n"
    size = struct.pack("<H" if major == 1 else "<I", len(hdr))
    return b"\x93NUMPY" + bytes([major, 0]) + size + hdr + data


def npy_files():
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((1, 4, 2, 2)).astype(np.float32)
    v1 = npy(f32)
    yield "f32_4d.npy", v1
    yield "f32_3d.npy", npy(rng.standard_normal((3, 2, 2)).astype(np.float32))
    yield "f16_4d.npy", npy(rng.standard_normal((1, 2, 2, 4)).astype(np.float16))
    bf16 = rng.integers(0, 1 << 16, size=(2, 2, 4), dtype=np.uint16)
    yield "u2_3d.npy", npy(bf16)
    yield "V2_3d.npy", npy(bf16.view("V2"))
    yield "V2_lt.npy", raw_npy("{'descr': '<V2', 'fortran_order': False, 'shape': (2, 2), }",
                                bytes(8))
    yield "empty.npy", npy(np.zeros((0, 3, 2, 2), np.float32))
    yield "scalar.npy", npy(np.float32(1.5).reshape(()))
    yield "nan.npy", npy(np.array([1.0, np.nan, np.inf], np.float32))
    yield "v2.npy", npy(np.ones((2, 2), np.float32), version=(2, 0))
    yield "v3.npy", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                            bytes(8), major=3)
    yield "fortran.npy", npy(np.asfortranarray(np.ones((2, 3), np.float32)))
    yield "big_endian.npy", npy(np.ones((2, 2), ">f4"))
    yield "f8.npy", npy(np.ones((2,), np.float64))
    yield "bad_magic.npy", b"\x93NUMPZ" + v1[6:80]
    yield "bad_version.npy", v1[:6] + b"\x04\x00" + v1[8:80]
    yield "header_past_end.npy", v1[:8] + b"\xff\xff" + v1[10:40]
    yield "truncated_data.npy", v1[:-5]
    yield "truncated_header.npy", v1[:30]
    yield "dup_key.npy", raw_npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
                                 "'shape': (1,), }", bytes(4))
    yield "nested.npy", raw_npy("{'descr': [('a', '<f4')], 'fortran_order': False, "
                                "'shape': ((1, 2), [3]), }", bytes(4))
    yield "huge_shape.npy", raw_npy("{'descr': '<f2', 'fortran_order': False, "
                                    "'shape': (9223372036854775807, 4, 0), }")
    yield "long_int.npy", raw_npy("{\"descr\": \"<f4\", \"fortran_order\": False, "
                                  "\"shape\": (2L, -1), }", bytes(8))


CONFIGS = {
    "default.ini": """# like configs/default.ini
batch = 1
seq-len = 256
heads = 4
kv-heads = 2
head-dim = 64
dtype = float16
causal = true
layout = zigzag
seed = 7
""",
    "mask.ini": """; sparse mask
window-left = 63
window-right = 0
dilation = 2
sinks = 4
global = 0,100-115, 7
block-size = 16
block-window = 1
block-global = 1
block-random = 2
block-seed = 3
""",
    "lists.ini": "sizes = 1, 2,4096\nsweep = both\nverify = yes\ntolerance = 1e-3\nq = x.npy\n",
    "section.ini": "[run]\nseq-len = 4\n",
    "unknown.ini": "seq-lne = 4\ncasual = true\n",
    "bad_values.ini": "heads = abc\nscale = nan\nthreads = -1\n",
    "bad_syntax.ini": "seq-len 4096\n=5\n",
    "duplicate.ini": "seq-len = 4\nseq-len = 8\n",
    "not_allowed.ini": "config = other.ini\nhelp = true\n",
    "empty_values.ini": "q =\nverify =\nglobal = ,,\n",
    "ranges.ini": "global = 9223372036854775807-1,5-3,-2\nfail-rank = -9223372036854775808\n",
    "gqa_bad.ini": "heads = 6\nkv-heads = 4\nhead-dim = 12\nbatch = 99999999999\n",
}


def main():
    for sub, files in (("npy", list(npy_files())), ("config", list(CONFIGS.items()))):
        d = os.path.join(HERE, "corpus", sub)
        os.makedirs(d, exist_ok=True)
        for name, content in files:
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(os.path.join(d, name), mode) as f:
                f.write(content)


if __name__ == "__main__":
    main()
