// Host-side logic of the GPU path, tested without a GPU: the head-dim
// dispatch, argument checks, launch grid and tile counts of the CUDA kernel;
// the peak table and copy choice; NCCL device selection, id sharing, group
// closing and the destroy-or-abort choice; the
// pluggable message memory of the in-process communicator; and how the GPU
// entry points fail where there is no GPU or no CUDA build.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <string>

#include "comm/nccl_group.hpp"
#include "cuda/flash_plan.hpp"
#include "ringattn/comm_nccl.hpp"
#include "ringattn/cuda.hpp"
#include "ringattn/error.hpp"

namespace ringattn {
namespace {

using cuda::FlashOut;
using cuda::FlashTarget;

AttentionArgs args(int64_t nq, int64_t nk, int64_t d, DType dt = DType::bf16) {
  alignas(16) static char dummy[16];
  AttentionArgs a;
  a.batch = 2, a.nq = nq, a.nk = nk, a.hq = 8, a.hkv = 2, a.head_dim = d, a.dtype = dt;
  a.q = a.k = a.v = dummy;
  return a;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CudaPlan, DispatchHeadDims) {
  EXPECT_EQ(cuda::flash_config(64).head_dim, 64);
  EXPECT_EQ(cuda::flash_config(128).head_dim, 128);
  EXPECT_EQ(cuda::flash_config(256).block_n, 32);
  for (int64_t d : {0, 32, 96, 100, 512}) {
    const std::string e = error_of([d] { cuda::flash_config(d); });
    EXPECT_NE(e.find(fmt::format("head dim {} is not supported", d)), std::string::npos) << e;
    EXPECT_NE(e.find("64, 128, 256"), std::string::npos) << e;
  }
}

TEST(CudaPlan, ConfigsFitSharedMemoryAndRegisters) {
  for (const cuda::FlashConfig& c : {cuda::kFlashD64, cuda::kFlashD128, cuda::kFlashD256}) {
    EXPECT_LE(c.smem_bytes(), std::size_t{160} * 1024) << c.head_dim;  // sm_80 opt-in limit
    EXPECT_EQ(c.block_m(), 16 * c.warps);
    EXPECT_EQ(c.block_n % 16, 0);
    EXPECT_EQ(c.head_dim % 64, 0);  // the shared-memory swizzle needs 8 chunks per row
  }
}

TEST(CudaPlan, ArgumentChecksNameTheField) {
  const FlashTarget out{};
  EXPECT_NE(error_of([&] {
              cuda::make_flash_params(args(8, 8, 128, DType::f32), out);
            }).find("dtype float32 is not supported"),
            std::string::npos);
  EXPECT_NE(error_of([&] { cuda::make_flash_params(args(8, 8, 80), out); }).find("head dim 80"),
            std::string::npos);
  AttentionArgs a = args(8, 8, 64);
  a.hkv = 3;
  EXPECT_NE(error_of([&] { cuda::make_flash_params(a, out); }).find("multiple of key/value heads"),
            std::string::npos);
  a = args(8, 8, 64);
  a.k = static_cast<const char*>(a.k) + 2;
  EXPECT_NE(error_of([&] { cuda::make_flash_params(a, out); }).find("k must be 16-byte aligned"),
            std::string::npos);
  a = args(8, 8, 64);
  FlashTarget merge;
  merge.mode = FlashOut::merge_f32;
  EXPECT_NE(error_of([&] { cuda::make_flash_params(a, merge); }).find("needs a state target"),
            std::string::npos);
  merge.is_state = true;
  EXPECT_NE(error_of([&] { cuda::make_flash_params(a, merge); }).find("batch must be 1"),
            std::string::npos);
  a.batch = 1;
  merge.state_tokens = 10, merge.row0 = 4;  // rows 4..12 of 10
  EXPECT_NE(error_of([&] { cuda::make_flash_params(a, merge); }).find("outside the state"),
            std::string::npos);
}

TEST(CudaPlan, ParamsStridesAndStateOffsets) {
  AttentionArgs a = args(100, 300, 128);
  a.scale = 0.5f;
  FlashTarget plain;
  float lse_base[1];
  plain.o = lse_base, plain.lse = lse_base;
  cuda::FlashParams p = cuda::make_flash_params(a, plain);
  EXPECT_EQ(p.group, 4);
  EXPECT_EQ(p.q_row_stride, 8 * 128);
  EXPECT_EQ(p.q_batch_stride, 100 * 8 * 128);
  EXPECT_EQ(p.k_row_stride, 2 * 128);
  EXPECT_EQ(p.k_batch_stride, 300 * 2 * 128);
  EXPECT_EQ(p.lse_head_stride, 100);
  EXPECT_EQ(p.lse_batch_stride, 800);
  EXPECT_FLOAT_EQ(p.scale_log2, 0.5f * 1.4426950408889634f);
  a.scale = 0;
  EXPECT_FLOAT_EQ(cuda::make_flash_params(a, plain).scale_log2,
                  static_cast<float>(1.4426950408889634 / std::sqrt(128.0)));

  // A state target: rows 50..149 of batch 1 of a [2, 400, 8, 128] state.
  a.batch = 1;
  std::vector<float> o(2 * 400 * 8 * 128), lse(2 * 8 * 400);
  FlashTarget st;
  st.o = o.data(), st.lse = lse.data(), st.mode = FlashOut::merge_f32, st.is_state = true;
  st.state_tokens = 400, st.batch_index = 1, st.row0 = 50;
  p = cuda::make_flash_params(a, st);
  EXPECT_EQ(static_cast<float*>(p.o), o.data() + (400 + 50) * 8 * 128);
  EXPECT_EQ(p.lse, lse.data() + 8 * 400 + 50);
  EXPECT_EQ(p.lse_head_stride, 400);
  EXPECT_EQ(p.o_row_stride, 8 * 128);
}

TEST(CudaPlan, LaunchGrid) {
  const AttentionArgs a = args(1000, 5, 128);
  const cuda::LaunchGrid g = cuda::flash_grid(cuda::kFlashD128, a);
  EXPECT_EQ(g.x, (1000 + 127) / 128);
  EXPECT_EQ(g.y, 8);
  EXPECT_EQ(g.z, 2);
  EXPECT_EQ(g.threads, 256);
  EXPECT_EQ(g.smem_bytes, cuda::kFlashD128.smem_bytes());
  EXPECT_EQ(cuda::flash_grid(cuda::kFlashD128, args(0, 5, 128)).x, 0);
  AttentionArgs many = args(8, 8, 128);
  many.batch = 70000;
  EXPECT_NE(
      error_of([&] { cuda::flash_grid(cuda::kFlashD128, many); }).find("exceeds CUDA's limits"),
      std::string::npos);
}

// Tile counts: every (query block, key tile) pair the mask leaves a visible
// pair in is computed, and none that is empty.
TEST(CudaPlan, TileStatsSkipExactlyTheEmptyTiles) {
  for (const int64_t n : {1, 100, 1000, 4096}) {
    for (const Mask& m : {Mask::none(), Mask::causal(0), Mask::band(-200, 0)}) {
      AttentionArgs a = args(n, n, 64);
      a.mask = m;
      const cuda::FlashConfig c = cuda::kFlashD64;
      const KernelStats s = cuda::flash_tile_stats(c, a);
      const int64_t bm = c.block_m(), bn = c.block_n;
      const int64_t mb = (n + bm - 1) / bm, nt = (n + bn - 1) / bn;
      int64_t visible_tiles = 0;
      for (int64_t i = 0; i < mb; ++i)
        for (int64_t j = 0; j < nt; ++j) {
          bool any = false;
          for (int64_t r = i * bm; r < std::min(n, (i + 1) * bm) && !any; ++r)
            for (int64_t k = j * bn; k < std::min(n, (j + 1) * bn) && !any; ++k)
              any = m.allows(r, k);
          visible_tiles += any;
        }
      EXPECT_EQ(s.tiles_total, mb * nt * 2 * 8) << n;
      EXPECT_EQ(s.tiles_computed, visible_tiles * 2 * 8) << n;  // classify is exact on empty
      EXPECT_LE(s.tiles_partial, s.tiles_computed);
    }
  }
  AttentionArgs a = args(4096, 4096, 128);
  a.mask = Mask::causal(0);
  const KernelStats s = cuda::flash_tile_stats(cuda::kFlashD128, a);
  // Causal with 128-row blocks and 64-key tiles: block i computes 2(i + 1) tiles, 2 partial.
  EXPECT_EQ(s.tiles_computed, 2 * 8 * (32 * 33));
  EXPECT_EQ(s.tiles_partial, 2 * 8 * 64);
}

TEST(CudaHost, PeakTable) {
  EXPECT_DOUBLE_EQ(dense_bf16_peak_tflops("NVIDIA H200"), 989.0);
  EXPECT_DOUBLE_EQ(dense_bf16_peak_tflops("NVIDIA H100 80GB HBM3"), 989.0);
  EXPECT_DOUBLE_EQ(dense_bf16_peak_tflops("NVIDIA H100 PCIe"), 756.0);
  EXPECT_DOUBLE_EQ(dense_bf16_peak_tflops("NVIDIA A100-SXM4-80GB"), 312.0);
  EXPECT_DOUBLE_EQ(dense_bf16_peak_tflops("NVIDIA A10G"), 70.0);
  EXPECT_DOUBLE_EQ(dense_bf16_peak_tflops("Some Future GPU"), 0.0);
}

TEST(CudaHost, CopyKind) {
  EXPECT_EQ(copy_kind(false, false), CopyKind::host_to_host);
  EXPECT_EQ(copy_kind(true, false), CopyKind::host_to_device);
  EXPECT_EQ(copy_kind(false, true), CopyKind::device_to_host);
  EXPECT_EQ(copy_kind(true, true), CopyKind::device_to_device);
}

TEST(CudaHost, NoGpuIsReportedNotThrown) {
  std::string why;
  const int n = cuda_device_count(&why);
  if (n > 0) GTEST_SKIP() << "a GPU is present: " << n << " device(s)";
  EXPECT_FALSE(why.empty());
  // The engine refuses to start, saying why.
  const std::string e = error_of([] { make_cuda_engine(0); });
  EXPECT_FALSE(e.empty());
  if (cuda_built()) {
    EXPECT_NE(e.find("no usable GPU"), std::string::npos) << e;
    EXPECT_NE(why.find("cudaGetDeviceCount failed"), std::string::npos) << why;
  } else {
    EXPECT_NE(e.find("built without CUDA"), std::string::npos) << e;
  }
}

TEST(NcclHost, SelectDevice) {
  EXPECT_EQ(select_device(0, 8, std::nullopt), 0);
  EXPECT_EQ(select_device(5, 8, std::nullopt), 5);
  EXPECT_EQ(select_device(9, 8, std::nullopt), 1);  // oversubscribed node: wrap around
  EXPECT_EQ(select_device(3, 8, std::string("6")), 6);
  EXPECT_EQ(select_device(3, 8, std::string("")), 3);  // empty: not set
  EXPECT_NE(error_of([] { select_device(0, 8, std::string("8")); }).find("RINGATTN_DEVICE='8'"),
            std::string::npos);
  EXPECT_NE(error_of([] { select_device(0, 8, std::string("x1")); }).find("0..7"),
            std::string::npos);
  EXPECT_NE(error_of([] { select_device(0, 0, std::nullopt); }).find("no CUDA device"),
            std::string::npos);
}

TEST(NcclHost, UniqueIdTravelsFromRankZero) {
  for (int p : {1, 2, 5}) {
    run_local(p, [](Communicator& c) {
      char id[128];
      for (int i = 0; i < 128; ++i) id[i] = static_cast<char>(c.rank() * 7 + i);
      const std::vector<char> got = share_from_root(c, id, sizeof id);
      ASSERT_EQ(got.size(), 128u);
      for (int i = 0; i < 128; ++i)
        EXPECT_EQ(got[static_cast<std::size_t>(i)], static_cast<char>(i));
    });
  }
  if (!nccl_built()) {
    EXPECT_NE(error_of([] {
                run_local(1, [](Communicator& c) { make_nccl(c, 0); });
              }).find("not built in"),
              std::string::npos);
  }
}

// A fake NCCL group API: the depth of open groups and the calls made.
int g_depth = 0, g_starts = 0, g_ends = 0, g_start_result = 0, g_end_result = 0;
int fake_start() {
  ++g_starts;
  if (g_start_result == 0) ++g_depth;
  return g_start_result;
}
int fake_end() {
  ++g_ends;
  --g_depth;
  return g_end_result;
}
void reset_fake_group(int start_result = 0, int end_result = 0) {
  g_depth = g_starts = g_ends = 0, g_start_result = start_result, g_end_result = end_result;
}

TEST(NcclHost, GroupIsClosedOnEveryPath) {
  reset_fake_group();
  {  // closed normally: ended once, its result reported
    GroupScope<int> g(&fake_start, &fake_end);
    EXPECT_EQ(g.started(), 0);
    EXPECT_TRUE(g.open());
    EXPECT_EQ(g.close(), 0);
    EXPECT_FALSE(g.open());
    EXPECT_EQ(g.close(), 0);  // a second close does not end it again
  }
  EXPECT_EQ(g_depth, 0);
  EXPECT_EQ(g_ends, 1);

  reset_fake_group();
  EXPECT_THROW(
      {
        GroupScope<int> g(&fake_start, &fake_end);
        throw Error("ncclSend failed inside the group");
      },
      Error);
  EXPECT_EQ(g_depth, 0) << "a throw inside the group left it open";
  EXPECT_EQ(g_ends, 1);

  reset_fake_group(0, 5);  // the end call's error reaches the caller
  {
    GroupScope<int> g(&fake_start, &fake_end);
    EXPECT_EQ(g.close(), 5);
  }
  EXPECT_EQ(g_ends, 1);

  reset_fake_group(3);  // a start that failed opened nothing: nothing to end
  {
    GroupScope<int> g(&fake_start, &fake_end);
    EXPECT_EQ(g.started(), 3);
    EXPECT_FALSE(g.open());
  }
  EXPECT_EQ(g_ends, 0);
  EXPECT_EQ(g_depth, 0);
}

TEST(NcclHost, ErrorsAbortInsteadOfWaiting) {
  EXPECT_EQ(nccl_teardown(false, 0, 0), NcclTeardown::destroy);  // clean run
  EXPECT_EQ(nccl_teardown(false, 1, 1), NcclTeardown::destroy);  // made and ended in a handler
  EXPECT_EQ(nccl_teardown(true, 0, 0), NcclTeardown::abort);     // a failed call, or abort()
  EXPECT_EQ(nccl_teardown(false, 0, 1), NcclTeardown::abort);    // destroyed by unwinding
  EXPECT_EQ(nccl_teardown(true, 0, 1), NcclTeardown::abort);
}

// The in-process backend stores and copies messages only through its LocalMemory.
TEST(LocalMemory, PointToPointGoesThroughThePluggedMemory) {
  std::atomic<int> allocs{0}, releases{0}, copies{0};
  LocalMemory mem = host_local_memory();
  LocalMemory counting;
  counting.name = "counting";
  counting.alloc = [&, mem](std::size_t b) {
    ++allocs;
    return mem.alloc(b);
  };
  counting.release = [&, mem](void* p, std::size_t b) {
    ++releases;
    mem.release(p, b);
  };
  counting.copy = [&, mem](void* d, const void* s, std::size_t b) {
    ++copies;
    mem.copy(d, s, b);
  };
  run_local(
      3,
      [](Communicator& c) {
        const int next = (c.rank() + 1) % 3, prev = (c.rank() + 2) % 3;
        std::vector<int> out(1000, c.rank()), in(1000, -1);
        Request r = c.irecv(in.data(), in.size() * sizeof(int), prev, 7);
        Request s = c.isend(out.data(), out.size() * sizeof(int), next, 7);
        r.wait();
        s.wait();
        for (int v : in) ASSERT_EQ(v, prev);
      },
      counting);
  EXPECT_EQ(allocs.load(), 3);
  EXPECT_EQ(releases.load(), 3);
  EXPECT_EQ(copies.load(), 6);  // into the mailbox and out of it
  LocalMemory broken;
  EXPECT_NE(error_of([&] {
              run_local(
                  1, [](Communicator&) {}, broken);
            }).find("lacks alloc"),
            std::string::npos);
}

}  // namespace
}  // namespace ringattn
