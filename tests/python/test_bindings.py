"""The Python module against a float64 NumPy reference written here: every
dtype, GQA, causal, cross-attention, masks, in-process rings of 1, 2, 3 and 5
ranks; zero-copy inputs; bad input; the planner. Run by ctest (python_bindings)
with the build tree's package on PYTHONPATH."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ringattn
from ringattn import _core

ml_dtypes = pytest.importorskip("ml_dtypes")

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# O is returned in the storage dtype: float32 accumulation plus half an ulp of it.
O_TOL = {"float32": 1e-5, "float16": 1e-5 + 2.0**-11, "bfloat16": 1e-5 + 2.0**-8}
LSE_TOL = 1e-4


def visible(nq, nk, causal=False, window_left=-1, window_right=-1, sinks=0, dilation=1):
    """The mask as the options define it: bottom-right aligned diagonal (key
    position = query position + nk - nq); visible = causal bound AND (window OR sinks)."""
    i = np.arange(nq)[:, None] + (nk - nq)
    j = np.arange(nk)[None, :]
    band = np.ones((nq, nk), bool)
    if window_left >= 0:
        band &= j >= i - window_left
    if window_right >= 0:
        band &= j <= i + window_right
    if dilation > 1:
        band &= (i - j) % dilation == 0
    m = band | (j < sinks)
    if causal:
        m &= j <= i
    return m


def reference(q, k, v, mask, scale=None):
    """float64 attention: q [B, N, Hq, D], k, v [B, Nk, Hkv, D] -> o, lse [B, Hq, N]."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    b, n, hq, d = q.shape
    hkv = k.shape[2]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    o = np.zeros((b, n, hq, d))
    lse = np.full((b, hq, n), -np.inf)
    for h in range(hq):
        g = h // (hq // hkv)
        s = np.einsum("bid,bjd->bij", q[:, :, h], k[:, :, g]) * scale
        s = np.where(mask[None], s, -np.inf)
        mx = s.max(axis=2, keepdims=True)
        seen = np.isfinite(mx)
        p = np.where(seen, np.exp(s - np.where(seen, mx, 0)), 0.0)
        l = p.sum(axis=2, keepdims=True)
        o[:, :, h] = np.where(l > 0, np.einsum("bij,bjd->bid", p, v[:, :, g]) / np.where(l > 0, l, 1), 0)
        lse[:, h] = np.where(l[..., 0] > 0, (mx + np.log(np.where(l > 0, l, 1)))[..., 0], -np.inf)
    return o, lse


def inputs(b, nq, nk, hq, hkv, d, dtype, seed):
    rng = np.random.default_rng(seed)
    mk = lambda n, h: rng.standard_normal((b, n, h, d)).astype(np.float32).astype(DTYPES[dtype])
    return mk(nq, hq), mk(nk, hkv), mk(nk, hkv)


def expect_close(o, lse, ref_o, ref_lse, dtype, what):
    o64 = np.asarray(o, dtype=np.float32).astype(np.float64)
    rel = np.linalg.norm(o64 - ref_o) / max(np.linalg.norm(ref_o), 1e-300)
    assert rel <= O_TOL[dtype], f"{what}: O rel. error {rel:.2e}"
    lse = np.asarray(lse, dtype=np.float64)
    assert np.array_equal(np.isinf(lse), np.isinf(ref_lse)), f"{what}: rows that see nothing differ"
    fin = np.isfinite(ref_lse)
    err = np.abs(lse[fin] - ref_lse[fin]).max() if fin.any() else 0.0
    assert err <= LSE_TOL, f"{what}: LSE error {err:.2e}"


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nq,nk,hq,hkv", [(300, 300, 4, 4), (257, 300, 4, 2), (300, 129, 6, 1)])
def test_attention_matches_float64(dtype, causal, nq, nk, hq, hkv):
    q, k, v = inputs(2, nq, nk, hq, hkv, 64, dtype, seed=nq + nk + hq + causal)
    o, lse = ringattn.attention(q, k, v, causal=causal)
    assert o.dtype == q.dtype and o.shape == q.shape and lse.shape == (2, hq, nq)
    ref_o, ref_lse = reference(q, k, v, visible(nq, nk, causal=causal))
    expect_close(o, lse, ref_o, ref_lse, dtype, f"{dtype} causal={causal} {nq}x{nk} {hq}/{hkv}")


@pytest.mark.parametrize("mask", [
    dict(causal=True, window_left=40),
    dict(window_left=17, window_right=9),
    dict(causal=True, window_left=60, sinks=4),
    dict(causal=True, window_left=64, dilation=3),
])
def test_masks_match_float64(mask):
    q, k, v = inputs(1, 333, 333, 4, 2, 32, "float32", seed=5)
    o, lse = ringattn.attention(q, k, v, **mask)
    ref_o, ref_lse = reference(q, k, v, visible(333, 333, **mask))
    expect_close(o, lse, ref_o, ref_lse, "float32", str(mask))


def test_scale_and_three_dimensional_arrays():
    q, k, v = inputs(1, 200, 200, 2, 2, 64, "float32", seed=9)
    o, lse = ringattn.attention(q[0], k[0], v[0], causal=True, scale=0.3)
    assert o.shape == q[0].shape and lse.shape == (2, 200)
    ref_o, ref_lse = reference(q, k, v, visible(200, 200, causal=True), scale=0.3)
    expect_close(o[None], lse[None], ref_o, ref_lse, "float32", "3-d, scale 0.3")


@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
@pytest.mark.parametrize("layout", ["contiguous", "zigzag", "striped"])
def test_ring_attention_matches_float64(ranks, layout):
    dtype = "bfloat16" if ranks == 3 else "float32"
    q, k, v = inputs(2, 401, 401, 4, 2, 32, dtype, seed=ranks)
    o, lse, stats = ringattn.ring_attention(q, k, v, ranks=ranks, layout=layout, causal=True,
                                            check_rows=16, threads=1)
    ref_o, ref_lse = reference(q, k, v, visible(401, 401, causal=True))
    expect_close(o, lse, ref_o, ref_lse, dtype, f"P={ranks} {layout}")
    assert stats["ref_pass"] is True and stats["layout"] == layout
    assert len(stats["per_rank"]) == ranks
    assert sum(r["tokens"] for r in stats["per_rank"]) == 401
    assert all(r["bytes_sent"] >= 0 and r["peak_bytes"] > 0 for r in stats["per_rank"])


def test_ring_window_sends_only_the_boundary_rows():
    q, k, v = inputs(1, 4096, 4096, 2, 2, 32, "float32", seed=3)
    o, lse, stats = ringattn.ring_attention(q, k, v, ranks=2, layout="contiguous", causal=True,
                                            window_left=63, threads=1)
    ref_o, ref_lse = reference(q, k, v, visible(4096, 4096, causal=True, window_left=63))
    expect_close(o, lse, ref_o, ref_lse, "float32", "window 63, 2 ranks")
    # the 63 key rows before the boundary, both heads, K and V
    assert sum(r["bytes_sent"] for r in stats["per_rank"]) == 63 * 2 * 32 * 4 * 2


def test_inputs_are_read_in_place():
    q, k, v = inputs(1, 64, 64, 2, 2, 32, "float32", seed=1)
    assert _core.data_pointer(q) == q.ctypes.data
    b = q.astype(ml_dtypes.bfloat16)
    assert _core.data_pointer(b.view(np.uint16)) == b.ctypes.data


def test_bad_input_is_a_value_error():
    q, k, v = inputs(1, 64, 64, 2, 2, 32, "float32", seed=2)
    with pytest.raises(ValueError, match="C-contiguous"):
        ringattn.attention(q[:, ::2], k[:, ::2], v[:, ::2])
    with pytest.raises(ValueError, match="4-d"):
        ringattn.attention(q[0, 0], k[0, 0], v[0, 0])
    with pytest.raises(ValueError, match="same shape"):
        ringattn.attention(q, k, v[:, :32].copy())
    with pytest.raises(ValueError, match="head_dim"):
        ringattn.attention(q, np.zeros((1, 64, 2, 16), np.float32), np.zeros((1, 64, 2, 16), np.float32))
    with pytest.raises(ValueError, match="not supported"):
        ringattn.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    with pytest.raises(ValueError, match="share a dtype"):
        ringattn.attention(q, k.astype(np.float16), v.astype(np.float16))
    with pytest.raises(ValueError, match="--window-left"):
        ringattn.attention(q, k, v, window_left=-5)
    with pytest.raises(ValueError, match="kv-heads|multiple|divisor"):
        ringattn.attention(np.zeros((1, 64, 3, 32), np.float32), k, v)
    with pytest.raises(ValueError, match="--no-such-option"):
        ringattn.attention(q, k, v, no_such_option=1)
    with pytest.raises(ValueError, match="ranks"):
        ringattn.ring_attention(q, k, v, ranks=0)
    with pytest.raises(ValueError, match="ring_attention"):
        ringattn.attention(q, k, v, route_block=16, route_topk=2, causal=True)


@pytest.mark.filterwarnings("ignore:profile 'cpu-icelake-2core' was measured on")
def test_plan_is_the_cli_plan():
    job = dict(seq_len=16384, heads=8, kv_heads=2, head_dim=128, causal=True, ranks=2,
               hardware="cpu-icelake-2core")
    p = ringattn.plan(**job)
    assert p["record"] == "summary" and len(p["per_rank"]) == 2 and p["per_step"]
    binary = os.environ.get("RINGATTN_BIN")
    if not binary:
        pytest.skip("RINGATTN_BIN not set")
    args = [binary, "plan", "--json"] + [f"--{k.replace('_', '-')}={str(v).lower()}"
                                         for k, v in job.items()]
    lines = [json.loads(l) for l in subprocess.run(args, capture_output=True, text=True,
                                                   check=True).stdout.splitlines()]
    cli = next(l for l in lines if l["record"] == "summary")
    assert set(cli) == set(p) - {"per_rank", "per_step"}
    assert cli["time_ms"] == pytest.approx(p["time_ms"])



def test_plan_warns_for_a_profile_of_another_cpu(tmp_path):
    shipped = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "hardware",
                           "cpu-zen4-2core.ini")
    text = open(shipped).read()
    start = text.index("\ncpu = ") + 1
    end = text.index("\n", start)
    other = tmp_path / "other.ini"
    other.write_text(text[:start] + "cpu = Other CPU 9000 (family 1, model 2)" + text[end:])
    with pytest.warns(UserWarning, match="was measured on Other CPU 9000"):
        p = ringattn.plan(seq_len=4096, heads=2, head_dim=64, ranks=2, hardware=str(other))
    assert "Other CPU 9000" in p["cpu_warning"] and p["this_cpu"]

def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.bfloat16):
        q, k, v = (torch.randn(1, 300, 4, 64, generator=g).to(dt) for _ in range(3))
        assert _core.data_pointer(q) == q.data_ptr()
        o, lse = ringattn.attention(q, k, v, causal=True)
        assert isinstance(o, torch.Tensor) and o.dtype == dt and lse.dtype == torch.float32
        name = "float32" if dt == torch.float32 else "bfloat16"
        qn, kn, vn = (x.float().numpy() for x in (q, k, v))
        ref_o, ref_lse = reference(qn, kn, vn, visible(300, 300, causal=True))
        expect_close(o.float().numpy(), lse.numpy(), ref_o, ref_lse, name, f"torch {name}")
        o2, lse2, _ = ringattn.ring_attention(q, k, v, ranks=3, causal=True, threads=1)
        expect_close(o2.float().numpy(), lse2.numpy(), ref_o, ref_lse, name, f"torch ring {name}")


def test_readme_example_script():
    script = os.path.join(os.path.dirname(__file__), "..", "..", "launch", "python_ring.py")
    run = subprocess.run([sys.executable, script, "--seq-len", "4096", "--rows", "8"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert ": ok" in run.stdout


def reference_grads(q, k, v, do, mask, scale=None):
    """float64 gradients of attention: dq, dk, dv (dk/dv summed over each K/V head's group)."""
    q, k, v, do = (np.asarray(x, dtype=np.float64) for x in (q, k, v, do))
    b, n, hq, d = q.shape
    hkv = k.shape[2]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for h in range(hq):
        g = h // (hq // hkv)
        s = np.where(mask[None], np.einsum("bid,bjd->bij", q[:, :, h], k[:, :, g]) * scale, -np.inf)
        mx = s.max(axis=2, keepdims=True)
        mx = np.where(np.isfinite(mx), mx, 0)
        p = np.exp(s - mx)
        p /= np.maximum(p.sum(axis=2, keepdims=True), 1e-300)
        o = np.einsum("bij,bjd->bid", p, v[:, :, g])
        dv[:, :, g] += np.einsum("bij,bid->bjd", p, do[:, :, h])
        dp = np.einsum("bid,bjd->bij", do[:, :, h], v[:, :, g])
        ds = p * (dp - (do[:, :, h] * o).sum(axis=2)[:, :, None])
        dq[:, :, h] = scale * np.einsum("bij,bjd->bid", ds, k[:, :, g])
        dk[:, :, g] += scale * np.einsum("bij,bid->bjd", ds, q[:, :, h])
    return dq, dk, dv


def rel(x, ref):
    return np.linalg.norm(np.asarray(x, dtype=np.float64) - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("mask", [dict(causal=False), dict(causal=True),
                                  dict(causal=True, window_left=50, sinks=3)])
def test_attention_backward_matches_float64(mask):
    q, k, v = inputs(2, 250, 250, 4, 2, 32, "float32", seed=11)
    do = np.random.default_rng(12).standard_normal(q.shape).astype(np.float32)
    o, lse = ringattn.attention(q, k, v, **mask)
    dq, dk, dv = ringattn.attention_backward(q, k, v, o, lse, do, **mask)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.dtype == np.float32
    ref = reference_grads(q, k, v, do, visible(250, 250, **mask))
    for name, x, r in zip(("dq", "dk", "dv"), (dq, dk, dv), ref):
        assert rel(x, r) <= 1e-5, f"{name} {mask}: {rel(x, r):.2e}"


def test_torch_autograd_gradients():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 200, h, 32, generator=g) for h in (4, 2, 2))
    w = torch.randn(1, 200, 4, 32, generator=g)
    for x in (q, k, v):
        x.requires_grad_(True)
    o = ringattn.attention_autograd(q, k, v, causal=True, window_left=60)
    (o * w).sum().backward()
    ref = reference_grads(q.detach().numpy(), k.detach().numpy(), v.detach().numpy(), w.numpy(),
                          visible(200, 200, causal=True, window_left=60))
    for name, x, r in zip(("dq", "dk", "dv"), (q, k, v), ref):
        assert x.grad.dtype == torch.float32
        assert rel(x.grad.numpy(), r) <= 1e-5, f"{name}: {rel(x.grad.numpy(), r):.2e}"


@pytest.mark.parametrize("call", ["attention", "ring_attention"])
def test_ctrl_c_interrupts_a_long_call(call):
    """SIGINT during a call of minutes ends it with KeyboardInterrupt. The call is far longer
    than the guard: without the interrupt it would still be running when the guard expires
    (a KeyboardInterrupt after a finished call would come only then)."""
    import signal
    import time
    script = (
        "import numpy as np, ringattn\n"
        "q = np.random.default_rng(0).standard_normal((1, 131072, 8, 64), dtype=np.float32)\n"
        "print('start', flush=True)\n"
        f"ringattn.{call}(q, q, q, causal=False, threads=2"
        f"{', ranks=2' if call == 'ring_attention' else ''})\n"
        "print('finished', flush=True)\n")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert p.stdout.readline().strip() == "start"
        time.sleep(1.0)  # into the call (the inputs are made before 'start')
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)  # the call alone would take minutes
    finally:
        p.kill()
    assert "KeyboardInterrupt" in err, err
    assert "finished" not in out


@pytest.mark.parametrize("ranks,layout", [(1, "contiguous"), (3, "zigzag")])
def test_ring_backward_returns_gradients(ranks, layout):
    q, k, v = inputs(1, 301, 301, 4, 2, 32, "float32", seed=30 + ranks)
    do = np.random.default_rng(31).standard_normal(q.shape).astype(np.float32)
    o, lse, stats, (dq, dk, dv) = ringattn.ring_attention(
        q, k, v, ranks=ranks, layout=layout, causal=True, window_left=80, do=do, check_rows=8,
        threads=1)
    mask = visible(301, 301, causal=True, window_left=80)
    ref_o, ref_lse = reference(q, k, v, mask)
    expect_close(o, lse, ref_o, ref_lse, "float32", f"backward run P={ranks}")
    ref = reference_grads(q, k, v, do, mask)
    for name, x, r in zip(("dq", "dk", "dv"), (dq, dk, dv), ref):
        assert rel(x, r) <= 1e-5, f"{name} P={ranks}: {rel(x, r):.2e}"
    assert stats["backward"] is True and stats["ref_grad_pass"] is True
