// Pieces the parts of the hierarchical stage share (internal).
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "ringattn/hierarchy_stage.hpp"

namespace ringattn::stage {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0);

// Query rows per kernel call of the stage: bounds its partial state.
inline constexpr int64_t kChunkRows = 16384;

// This rank's query rows in chunks of at most kChunkRows, each at positions pos.
struct QueryChunk {
  int64_t local = 0, count = 0;  // local rows [local, local + count)
  Positions pos;
  int64_t nq_local = 0;  // the rank's query rows
};
std::vector<QueryChunk> query_chunks(const RingProblem& p, int rank);
// Bytes of one chunk's batch-1 partial state (O then LSE, float32).
std::size_t chunk_work_bytes(const RingProblem& p);

// o/lse rows [row0, row0 + rows) of batch `batch` <- merge(them, partial po
// [rows, Hq, D], pl [Hq, rows]).
void merge_partial(const RingProblem& p, float* o, float* lse, int64_t nq_local, int64_t batch,
                   int64_t row0, const float* po, const float* pl, int64_t rows, int threads);

StageMetrics routing_stage(Communicator& comm, const RingProblem& p, float* o, float* lse,
                           const KernelOptions& kopt, int32_t* route);

}  // namespace ringattn::stage
