"""ringattn from Python: exact attention over long sequences, one kernel call or
a ring of in-process ranks, on NumPy arrays or PyTorch tensors, and the planner.

    import numpy as np, ringattn
    q = np.random.randn(1, 65536, 8, 128).astype(np.float32)   # [B, N, H, D]
    k = np.random.randn(1, 65536, 2, 128).astype(np.float32)   # [B, N, Hkv, D]
    v = np.random.randn(1, 65536, 2, 128).astype(np.float32)
    o, lse = ringattn.attention(q, k, v, causal=True)
    o, lse, stats = ringattn.ring_attention(q, k, v, ranks=4, causal=True, check_rows=64)
    p = ringattn.plan(seq_len=1 << 20, heads=8, head_dim=128, causal=True, ranks=8,
                      hardware="h100-sxm")

Arrays: C-contiguous, on the CPU, [B, N, H, D] or [N, H, D], float32, float16 or
bfloat16 (NumPy's through ml_dtypes.bfloat16); q, k and v share a dtype. They
are read where they are (no copy); a non-contiguous array is a ValueError
(np.ascontiguousarray / tensor.contiguous() first). Outputs come back as the
inputs' kind (NumPy or torch): O like q, LSE [B, H, N] float32 (natural log).

Keyword arguments are the options of `ringattn run` (and `ringattn plan`) with
'_' for '-': the same names, defaults, checks and messages (`ringattn run --help`
lists them). A bad value is a ValueError naming the option; a failed check
(check_rows, verify) or a rank's error is a RuntimeError. The call runs without
the GIL.
"""
import json
import os
import warnings

import numpy as np

# An installed package carries the shipped hardware profiles (plan(hardware=NAME));
# $RINGATTN_HARDWARE_DIR, when set, still comes first.
_PROFILES = os.path.join(os.path.dirname(__file__), "hardware")
if os.path.isdir(_PROFILES):
    os.environ.setdefault("RINGATTN_HARDWARE_DIR", _PROFILES)

from . import _core  # noqa: E402

__all__ = ["attention", "attention_backward", "ring_attention", "ring_attention_mpi", "shard",
           "unshard", "plan", "best_isa", "attention_autograd"]

_DTYPES = ("float32", "float16", "bfloat16")


def best_isa():
    """The kernel instruction set this CPU runs ('avx512', 'avx2' or 'generic')."""
    return _core.best_isa()


def _is_torch(a):
    return type(a).__module__.startswith("torch")


def _dtype_name(name, a):
    d = str(a.dtype)
    d = d[len("torch."):] if d.startswith("torch.") else d
    if d not in _DTYPES:
        raise ValueError(f"{name}: dtype {d} is not supported; expected one of {', '.join(_DTYPES)}")
    return d


def _check_array(name, a):
    if _is_torch(a):
        if a.device.type != "cpu":
            raise ValueError(f"{name}: a {a.device.type} tensor; ringattn's Python calls run on "
                             "the CPU (move it with .cpu())")
        contiguous = a.is_contiguous()
    elif isinstance(a, np.ndarray):
        contiguous = a.flags.c_contiguous
    else:
        raise ValueError(f"{name}: expected a NumPy array or a torch tensor, got {type(a).__name__}")
    if a.ndim not in (3, 4):
        raise ValueError(f"{name}: expected a 4-d [B, N, H, D] or 3-d [N, H, D] array, got shape "
                         f"{tuple(a.shape)}")
    if not contiguous:
        raise ValueError(f"{name}: not C-contiguous; ringattn reads arrays in place and makes no "
                         "copies (np.ascontiguousarray(x) or x.contiguous() first)")


def _raw(a):
    """What the compiled core reads: NumPy bfloat16 (ml_dtypes) as its uint16 view."""
    if isinstance(a, np.ndarray) and a.dtype.name == "bfloat16":
        return a.view(np.uint16)
    return a


def _problem(q, k, v):
    """The --batch ... --dtype options of q, k, v, and whether they had a batch axis."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        _check_array(name, a)
    if _is_torch(q) != _is_torch(k) or _is_torch(q) != _is_torch(v):
        raise ValueError("q, k and v: mix NumPy arrays and torch tensors; give one kind")
    dt = _dtype_name("q", q)
    for name, a in (("k", k), ("v", v)):
        if _dtype_name(name, a) != dt:
            raise ValueError(f"{name}: dtype {_dtype_name(name, a)} differs from q's {dt}; q, k "
                             "and v must share a dtype")
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError(f"q, k, v: shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)} "
                         "differ in rank; give all three with a batch axis or none")
    if tuple(k.shape) != tuple(v.shape):
        raise ValueError(f"v: shape {tuple(v.shape)} differs from k's {tuple(k.shape)}; k and v "
                         "must have the same shape")
    batched = q.ndim == 4
    qs = tuple(q.shape) if batched else (1,) + tuple(q.shape)
    ks = tuple(k.shape) if batched else (1,) + tuple(k.shape)
    if ks[0] != qs[0]:
        raise ValueError(f"k: batch {ks[0]} differs from q's {qs[0]}")
    if ks[3] != qs[3]:
        raise ValueError(f"k: head_dim (last axis) {ks[3]} differs from q's {qs[3]}")
    args = ["--batch", qs[0], "--seq-len", qs[1], "--kv-seq-len", ks[1], "--heads", qs[2],
            "--kv-heads", ks[2], "--head-dim", qs[3], "--dtype", dt]
    return [str(x) for x in args], qs, batched


def _options(kw):
    """Keyword arguments as command-line options (None: the option's default)."""
    out = []
    for key, value in kw.items():
        if value is None:
            continue
        opt = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(f"{opt}={'true' if value else 'false'}")
        elif isinstance(value, (list, tuple)):
            out.append(f"{opt}={','.join(str(x) for x in value)}")
        else:
            out.append(f"{opt}={value}")
    return out


def _outputs(q, qs, want_o=True):
    b, n, h, d = qs
    if _is_torch(q):
        import torch
        o = torch.empty(tuple(q.shape), dtype=q.dtype) if want_o else None
        lse = torch.empty((b, h, n), dtype=torch.float32)
    else:
        o = np.empty(q.shape, dtype=q.dtype) if want_o else None
        lse = np.empty((b, h, n), dtype=np.float32)
    return o, lse


def _unbatch(lse, batched):
    return lse if batched else lse[0]


def attention(q, k, v, *, causal=False, scale=None, window_left=None, window_right=None,
              sinks=None, dilation=None, threads=None, isa=None, **options):
    """Attention of q against k, v in one kernel call on this process's threads.

    Masks: causal (bottom-right aligned), window_left/window_right, dilation,
    sinks, and the other mask options of `ringattn run` (block sparsity, global
    tokens, doc_lens for packed documents). Returns (o, lse): o like q, lse
    [B, Hq, N] float32 ([Hq, N] for 3-d inputs).
    """
    prob, qs, batched = _problem(q, k, v)
    args = ["run"] + prob + _options(dict(causal=causal, scale=scale, window_left=window_left,
                                          window_right=window_right, sinks=sinks,
                                          dilation=dilation, threads=threads, isa=isa, **options))
    o, lse = _outputs(q, qs)
    _core.attention(args, _raw(q), _raw(k), _raw(v), _raw(o), lse)
    return o, _unbatch(lse, batched)


def _float32(name, a, shape):
    """a as a C-contiguous float32 array of `shape` (a copy only when it is not one already)."""
    if _is_torch(a):
        a = a.detach().to(dtype=__import__("torch").float32).contiguous()
    else:
        a = np.ascontiguousarray(a, dtype=np.float32)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: shape {tuple(a.shape)}, expected {tuple(shape)}")
    return a


def attention_backward(q, k, v, o, lse, do, *, causal=False, scale=None, window_left=None,
                       window_right=None, sinks=None, dilation=None, threads=None, isa=None,
                       **options):
    """Gradients of attention(q, k, v, ...) given its outputs o, lse and O's
    gradient do, with the same mask options: (dq, dk, dv), float32 and shaped
    like q, k, v (the kernel's backward: FlashAttention-2, never N x N). o, lse
    and do are used as float32 (converted if they are not)."""
    prob, qs, batched = _problem(q, k, v)
    b, n, hq, d = qs
    o = _float32("o", o, q.shape)
    do = _float32("do", do, q.shape)
    lse = _float32("lse", lse, (b, hq, n) if batched else (hq, n))
    args = ["run"] + prob + _options(dict(causal=causal, scale=scale, window_left=window_left,
                                          window_right=window_right, sinks=sinks,
                                          dilation=dilation, threads=threads, isa=isa, **options))
    if _is_torch(q):
        import torch
        dq, dk, dv = (torch.empty(tuple(x.shape), dtype=torch.float32) for x in (q, k, v))
    else:
        dq, dk, dv = (np.empty(x.shape, dtype=np.float32) for x in (q, k, v))
    _core.attention_backward(args, _raw(q), _raw(k), _raw(v), o, lse, do, dq, dk, dv)
    return dq, dk, dv


def attention_autograd(q, k, v, **options):
    """attention() as a differentiable torch operation (torch.autograd.Function):
    returns o; o.backward() runs attention_backward. Gradients come back in the
    inputs' dtypes."""
    from ._autograd import AttentionFunction
    return AttentionFunction.apply(q, k, v, options)


def ring_attention(q, k, v, *, ranks=2, layout=None, causal=False, check_rows=None, verify=None,
                   threads=None, do=None, **options):
    """The ring job on `ranks` in-process ranks over global q, k, v (the
    single-process fallback of `ringattn run --ranks-local P`).

    Every option of `ringattn run` applies (layout, masks, stages, check_rows,
    verify, repeats, ...). Each rank copies its own rows of q, k, v, as a rank
    of a real ring holds them. Returns (o, lse, stats): stats is the run's
    --metrics summary (time_ms, gflops, bytes_sent, the checks' errors, ...)
    with "per_rank", one dict per rank (tokens, steps, bytes_sent, peak_bytes,
    compute_ms, wait_ms, ...): the keys of `ringattn run --metrics`.

    do (O's gradient, shaped like q): the ring's backward pass runs after the
    forward (`run --backward`), and the call returns (o, lse, stats, (dq, dk,
    dv)), the gradients float32 and shaped like q, k, v; check_rows and verify
    then check them too.
    """
    prob, qs, batched = _problem(q, k, v)
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"ranks: expected an integer >= 1, got {ranks!r}")
    args = ["run"] + prob + [f"--ranks-local={ranks}"] + _options(
        dict(layout=layout, causal=causal, check_rows=check_rows, verify=verify, threads=threads,
             **options))
    o, lse = _outputs(q, qs)
    grads = ()
    if do is not None:
        do = _float32("do", do, q.shape)
        args.append("--backward")
        if _is_torch(q):
            import torch
            grads = tuple(torch.empty(tuple(x.shape), dtype=torch.float32) for x in (q, k, v))
        else:
            grads = tuple(np.empty(x.shape, dtype=np.float32) for x in (q, k, v))
    records = [json.loads(r) for r in _core.run(args, _raw(q), _raw(k), _raw(v), _raw(o), lse,
                                                ranks, do, *(grads or (None, None, None)))]
    stats = next((r for r in records if r.get("record") == "summary"), {})
    stats["per_rank"] = [r for r in records if r.get("record") == "rank"]
    if do is not None:
        return o, _unbatch(lse, batched), stats, grads
    return o, _unbatch(lse, batched), stats


def _token_index(n, ranks, rank, layout, keys, options):
    """Global token positions of `rank`'s rows in its local order."""
    args = ["run", f"--seq-len={n}", f"--kv-seq-len={n}", f"--layout={layout}"] + _options(options)
    segs = sorted(_core.layout_segments(args, ranks, rank, keys), key=lambda s: s[3])
    return np.concatenate([np.arange(s[0], s[0] + s[1] * s[2], s[1]) for s in segs] or
                          [np.zeros(0, dtype=np.int64)])


def shard(x, rank, ranks, layout, *, keys=False, **options):
    """Rank `rank`'s tokens of a global array x ([B, N, H, D] or [N, H, D]) for a
    ring of `ranks` ranks in `layout` (contiguous, zigzag, striped; balanced with
    the mask options), in the order ring_attention_mpi takes them; keys=True for
    k and v. A contiguous copy."""
    axis = x.ndim - 3
    idx = _token_index(x.shape[axis], ranks, rank, layout, keys, options)
    if _is_torch(x):
        import torch
        return x.index_select(axis, torch.from_numpy(idx)).contiguous()
    return np.ascontiguousarray(np.take(x, idx, axis=axis))


def unshard(parts, layout, *, keys=False, **options):
    """The global array from every rank's part (a list in rank order, as shard
    made them or ring_attention_mpi returned them: O [.., n_r, H, D]); for LSE
    parts [B, H, n_r] (the token axis last) pass lse=True."""
    lse = options.pop("lse", False)
    axis = parts[0].ndim - 1 if lse else parts[0].ndim - 3
    n = sum(p.shape[axis] for p in parts)
    idx = [_token_index(n, len(parts), r, layout, keys, options) for r in range(len(parts))]
    order = np.argsort(np.concatenate(idx), kind="stable")
    if _is_torch(parts[0]):
        import torch
        return torch.cat(list(parts), dim=axis).index_select(axis, torch.from_numpy(order))
    return np.take(np.concatenate(parts, axis=axis), order, axis=axis)


def ring_attention_mpi(q, k, v, *, layout, comm=None, seq_len=None, kv_seq_len=None, **options):
    """One rank of the ring under mpirun (mpi4py): q, k, v are this rank's
    tokens in `layout`'s order (shard() makes them from global arrays); every
    rank calls it with the same options. Returns this rank's (o, lse, stats):
    o like q, lse [B, Hq, n_local]; stats as ring_attention's (rank 0's has the
    whole run). comm: MPI.COMM_WORLD (the default; other communicators are not
    supported yet). The checks (check_rows, verify) need every rank's inputs on
    rank 0: compare unshard() of the gathered outputs with a reference instead.
    """
    from mpi4py import MPI
    if comm is not None and comm != MPI.COMM_WORLD:
        raise ValueError("comm: only MPI.COMM_WORLD is supported")
    world = MPI.COMM_WORLD
    prob, qs, batched = _problem(q, k, v)
    n = seq_len if seq_len is not None else world.allreduce(qs[1])
    nk = kv_seq_len if kv_seq_len is not None else world.allreduce(
        k.shape[-3] if k.ndim == 4 else k.shape[0])
    prob[prob.index("--seq-len") + 1] = str(n)
    prob[prob.index("--kv-seq-len") + 1] = str(nk)
    args = ["run"] + prob + [f"--layout={layout}"] + _options(options)
    o, lse = _outputs(q, qs)
    records = [json.loads(r) for r in _core.run_mpi(args, _raw(q), _raw(k), _raw(v), _raw(o), lse)]
    stats = next((r for r in records if r.get("record") == "summary"), {})
    stats["per_rank"] = [r for r in records if r.get("record") == "rank"]
    return o, _unbatch(lse, batched), stats


def plan(**job):
    """The planner on a job described by the options of `ringattn plan` (seq_len,
    heads, head_dim, causal, ranks or ranks_local, hardware, layout, ...):
    the `plan --json` summary record, with "per_rank" and "per_step" lists of
    its per-rank and per-step records (the same keys). A cpu profile measured on
    another CPU (or for another kernel ISA) gives a UserWarning, as the CLI warns;
    the text is also summary["cpu_warning"]."""
    records = [json.loads(r) for r in _core.plan(["plan"] + _options(job))]
    summary = next((r for r in records if r.get("record") == "summary"), {})
    if summary.get("cpu_warning"):
        warnings.warn(summary["cpu_warning"], UserWarning, stacklevel=2)
    summary["per_rank"] = [r for r in records if r.get("record") == "rank"]
    summary["per_step"] = [r for r in records if r.get("record") == "step"]
    return summary
