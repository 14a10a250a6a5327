"""ring_attention_mpi under mpirun (ctest python_mpi: mpirun -np 2 python -m pytest
tests/python/test_mpi.py): every rank shards the same global arrays, runs its part
of the ring, and the gathered outputs are checked against the float64 reference."""
import numpy as np
import pytest

import ringattn

MPI = pytest.importorskip("mpi4py.MPI")
from test_bindings import expect_close, inputs, reference, visible  # noqa: E402

world = MPI.COMM_WORLD


@pytest.mark.parametrize("layout,dtype", [("contiguous", "float32"), ("zigzag", "bfloat16"),
                                          ("striped", "float16")])
def test_ring_over_mpi_ranks_matches_float64(layout, dtype):
    ranks, rank = world.Get_size(), world.Get_rank()
    q, k, v = inputs(2, 333, 333, 4, 2, 32, dtype, seed=21)  # the same on every rank
    ql, kl, vl = (ringattn.shard(x, rank, ranks, layout, keys=x is not q) for x in (q, k, v))
    o, lse, stats = ringattn.ring_attention_mpi(ql, kl, vl, layout=layout, causal=True, threads=1)
    assert o.shape == ql.shape and lse.shape == (2, 4, ql.shape[1])
    assert stats["backend"] == "mpi"
    o_all = ringattn.unshard(world.allgather(o), layout)
    lse_all = ringattn.unshard(world.allgather(lse), layout, lse=True)
    ref_o, ref_lse = reference(q, k, v, visible(333, 333, causal=True))
    expect_close(o_all, lse_all, ref_o, ref_lse, dtype, f"mpi {ranks} ranks {layout}")


def test_shard_and_unshard_are_inverse():
    q, _, _ = inputs(1, 101, 101, 2, 2, 8, "float32", seed=2)
    for layout in ("contiguous", "zigzag", "striped"):
        parts = [ringattn.shard(q, r, 3, layout) for r in range(3)]
        assert sum(p.shape[1] for p in parts) == 101
        assert np.array_equal(ringattn.unshard(parts, layout), q)


def test_checks_need_global_inputs():
    q, k, v = inputs(1, 64, 64, 2, 2, 32, "float32", seed=4)
    ql, kl, vl = (ringattn.shard(x, world.Get_rank(), world.Get_size(), "contiguous")
                  for x in (q, k, v))
    with pytest.raises(ValueError, match="--check-rows"):
        ringattn.ring_attention_mpi(ql, kl, vl, layout="contiguous", check_rows=8)
