#include "job/outputs.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "ringattn/error.hpp"
#include "ringattn/memory.hpp"

namespace ringattn::job {
namespace {

// Tags of the gather messages; the ring's own tags are 1 .. P - 1 and all consumed by then.
constexpr int kTagGo = 32760;
constexpr int kTagO = 32761;
constexpr int kTagLse = 32762;
constexpr int kTagBytesGo = 32763;
constexpr int kTagBytes = 32764;
// How often a rank waiting for its turn checks for it. Sleeping instead of blocking keeps
// MPI's busy-polling off the cores while rank 0 runs --verify's single-rank kernel (T1).
constexpr auto kIdlePoll = std::chrono::milliseconds(1);

void wait_idle(Request& r) {
  while (!r.test()) std::this_thread::sleep_for(kIdlePoll);
}

}  // namespace

void RunOutputs::check_writable(const JobSpec& cfg) {
  if (!cfg.out_path.empty()) check_output_writable(cfg.out_path, "out");
  if (!cfg.lse_path.empty()) check_output_writable(cfg.lse_path, "lse_out");
  if (!cfg.route_path.empty()) check_output_writable(cfg.route_path, "route_out");
  if (!cfg.keep_path.empty()) check_output_writable(cfg.keep_path, "kv_keep_out");
}

RunOutputs::RunOutputs(const JobSpec& cfg) : cfg_(cfg) {
  const bool b = cfg.batched_output();
  if (!cfg.out_path.empty()) {
    std::vector<int64_t> shape = {cfg.nq, cfg.hq, cfg.head_dim};
    if (b) shape.insert(shape.begin(), cfg.batch);
    o_.emplace(cfg.out_path, cfg.dtype, std::move(shape), "out");
  }
  if (!cfg.lse_path.empty()) {
    std::vector<int64_t> shape = {cfg.hq, cfg.nq};
    if (b) shape.insert(shape.begin(), cfg.batch);
    lse_.emplace(cfg.lse_path, DType::f32, std::move(shape), "lse_out");
  }
  if (!cfg.route_path.empty()) {
    std::vector<int64_t> shape = {cfg.nq, cfg.hq, cfg.hier.route_topk};
    if (b) shape.insert(shape.begin(), cfg.batch);
    route_.emplace(cfg.route_path, NpyElem::i32, std::move(shape), "route_out");
  }
  if (!cfg.keep_path.empty()) {
    std::vector<int64_t> shape = {cfg.select.heads(cfg.hq, cfg.hkv), cfg.nk};
    if (b) shape.insert(shape.begin(), cfg.batch);
    keep_.emplace(cfg.keep_path, NpyElem::u8, std::move(shape), "kv_keep_out");
  }
}

void RunOutputs::write_keep(const uint8_t* keep) {
  if (!keep_) return;
  const int64_t n = cfg_.batch * cfg_.select.heads(cfg_.hq, cfg_.hkv) * cfg_.nk;
  keep_->write_strided(0, 1, 1, n, keep);
}

void RunOutputs::write_route(const Layout& ql, int rank, const int32_t* route) {
  if (!route_) return;
  const int64_t n = ql.tokens(rank), row = cfg_.hq * cfg_.hier.route_topk;
  const std::size_t row_bytes = static_cast<std::size_t>(row) * sizeof(int32_t);
  for (int64_t b = 0; b < cfg_.batch; ++b)
    for (const Segment& s : ql.segments(rank))
      route_->write_strided(static_cast<std::size_t>(b * cfg_.nq + s.start) * row_bytes,
                            static_cast<std::size_t>(s.stride) * row_bytes, row_bytes, s.count,
                            route + (b * n + s.local_offset) * row);
}

void write_token_rows(NpyOutFile& file, const Layout& l, int rank, int64_t batch, int64_t n_global,
                      int64_t row, const float* rows) {
  const int64_t n = l.tokens(rank);
  const DType dt = file.dtype();
  const std::size_t esz = dtype_size(dt), row_bytes = static_cast<std::size_t>(row) * esz;
  int64_t max_seg = 0;
  for (const Segment& s : l.segments(rank)) max_seg = std::max(max_seg, s.count);
  Buffer stage(dt == DType::f32 ? 0 : static_cast<std::size_t>(max_seg) * row_bytes, "output rows");
  for (int64_t b = 0; b < batch; ++b)
    for (const Segment& s : l.segments(rank)) {
      const float* src = rows + (b * n + s.local_offset) * row;
      const void* data = src;
      if (dt != DType::f32) {
        for (int64_t i = 0; i < s.count * row; ++i)
          store_from_f32(stage.data(), dt, static_cast<std::size_t>(i), src[i]);
        data = stage.data();
      }
      file.write_strided(static_cast<std::size_t>(b * n_global + s.start) * row_bytes,
                         static_cast<std::size_t>(s.stride) * row_bytes, row_bytes, s.count, data);
    }
}

void RunOutputs::write_rank(const Layout& ql, int rank, const float* o, const float* lse) {
  const int64_t n = ql.tokens(rank);
  if (cfg_.arrays.o != nullptr || cfg_.arrays.lse != nullptr) write_arrays(ql, rank, o, lse);
  if (o_) write_token_rows(*o_, ql, rank, cfg_.batch, cfg_.nq, cfg_.hq * cfg_.head_dim, o);
  if (lse_) {
    for (int64_t b = 0; b < cfg_.batch; ++b)
      for (int64_t h = 0; h < cfg_.hq; ++h)
        for (const Segment& s : ql.segments(rank))
          lse_->write_strided(
              static_cast<std::size_t>((b * cfg_.hq + h) * cfg_.nq + s.start) * sizeof(float),
              static_cast<std::size_t>(s.stride) * sizeof(float), sizeof(float), s.count,
              lse + (b * cfg_.hq + h) * n + s.local_offset);
  }
}

void RunOutputs::write_arrays(const Layout& ql, int rank, const float* o, const float* lse) {
  const int64_t n = ql.tokens(rank), row = cfg_.hq * cfg_.head_dim;
  for (int64_t b = 0; b < cfg_.batch; ++b)
    for (const Segment& s : ql.segments(rank))
      for (int64_t i = 0; i < s.count; ++i) {
        const int64_t t = s.start + i * s.stride, li = s.local_offset + i;
        if (cfg_.arrays.o != nullptr) {
          const float* src = o + (b * n + li) * row;
          const std::size_t dst = static_cast<std::size_t>((b * cfg_.nq + t) * row);
          for (int64_t e = 0; e < row; ++e)
            store_from_f32(cfg_.arrays.o, cfg_.dtype, dst + static_cast<std::size_t>(e), src[e]);
        }
        if (cfg_.arrays.lse != nullptr)
          for (int64_t h = 0; h < cfg_.hq; ++h)
            cfg_.arrays.lse[(b * cfg_.hq + h) * cfg_.nq + t] = lse[(b * cfg_.hq + h) * n + li];
      }
}

void RunOutputs::commit() {
  if (o_) o_->commit();
  if (lse_) lse_->commit();
  if (route_) route_->commit();
  if (keep_) keep_->commit();
}

void gather_bytes(Communicator& comm, const std::function<std::size_t(int)>& bytes_of,
                  const void* mine, const std::function<void(int rank, const void*)>& sink) {
  if (comm.rank() != 0) {
    char go = 0;
    Request turn = comm.irecv(&go, 1, 0, kTagBytesGo);
    wait_idle(turn);
    comm.isend(mine, bytes_of(comm.rank()), 0, kTagBytes).wait();
    return;
  }
  sink(0, mine);
  for (int r = 1; r < comm.size(); ++r) {
    Buffer in(std::max<std::size_t>(bytes_of(r), 1), "gathered rows");
    Request q = comm.irecv(in.data(), bytes_of(r), r, kTagBytes);
    const char go = 1;
    comm.isend(&go, 1, r, kTagBytesGo).wait();
    q.wait();
    sink(r, in.data());
  }
}

void gather_rows(Communicator& comm, const Layout& ql, int64_t batch, int64_t hq, int64_t head_dim,
                 const float* o, const float* lse, const RowSink& sink) {
  const auto o_bytes = [&](int r) {
    return static_cast<std::size_t>(batch * ql.tokens(r) * hq * head_dim) * sizeof(float);
  };
  const auto lse_bytes = [&](int r) {
    return static_cast<std::size_t>(batch * hq * ql.tokens(r)) * sizeof(float);
  };
  if (comm.rank() != 0) {
    char go = 0;
    Request turn = comm.irecv(&go, 1, 0, kTagGo);
    wait_idle(turn);
    Request so = comm.isend(o, o_bytes(comm.rank()), 0, kTagO);
    Request sl = comm.isend(lse, lse_bytes(comm.rank()), 0, kTagLse);
    so.wait();
    sl.wait();
    return;
  }
  sink(0, o, lse);
  for (int r = 1; r < comm.size(); ++r) {
    Buffer ro(o_bytes(r), "gathered O"), rl(lse_bytes(r), "gathered LSE");
    Request qo = comm.irecv(ro.data(), o_bytes(r), r, kTagO);
    Request ql_req = comm.irecv(rl.data(), lse_bytes(r), r, kTagLse);
    const char go = 1;
    comm.isend(&go, 1, r, kTagGo).wait();
    qo.wait();
    ql_req.wait();
    sink(r, ro.as<float>(), rl.as<float>());
  }
}

}  // namespace ringattn::job
