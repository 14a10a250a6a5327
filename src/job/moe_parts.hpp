// The MoE stage's pieces a job runs (internal to the job library): one rank's
// stage state, and rank 0's collection of every rank's rows into the output
// files and the float64 check. `ringattn moe` (moe_job.cpp) and `ringattn run`
// (job.cpp) both use them.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ringattn/comm.hpp"
#include "ringattn/layout.hpp"
#include "ringattn/moe.hpp"
#include "ringattn/moe_job.hpp"
#include "ringattn/moe_stage.hpp"
#include "ringattn/npy_out.hpp"

namespace ringattn::job {

// Global token indices of a rank's rows: batch-major, each batch in the
// layout's local order (b * n + position).
std::vector<int64_t> moe_row_index(const Layout& l, int rank, int64_t batch);

// What the stage needs besides its rows: the config, where the weights come
// from, the token count and sequence length.
struct MoeSetup {
  MoeConfig config;
  std::string weights_dir;  // "" = generated from seed
  uint64_t seed = 0;
  int64_t d_model = 0, tokens = 0, seq_len = 0;
};

// One rank's stage: its experts' weights, its rows' indices and outputs.
class MoeRank {
 public:
  MoeRank(Communicator& comm, const MoeSetup& setup, std::vector<int64_t> index);
  // One pass on x [rows, d_model]; the balance bias moves for the next pass.
  MoeMetrics pass(const float* x, int blas_threads);
  int64_t rows() const { return static_cast<int64_t>(index_.size()); }
  const std::vector<int64_t>& index() const { return index_; }
  const float* y() const { return y_.data(); }
  const int32_t* routing() const { return routing_.data(); }
  const float* gates() const { return gates_.data(); }
  // The balance bias the last pass selected with.
  const std::vector<float>& last_bias() const { return last_bias_; }

 private:
  Communicator& comm_;
  MoeSetup setup_;
  std::vector<int64_t> index_;
  MoeWeights weights_;
  std::vector<float> y_, gates_;
  std::vector<int32_t> routing_;
  std::vector<float> last_bias_;
  MoeWorkspace workspace_;
};

// Output paths (empty: not written) and the check's size.
struct MoeOutputPaths {
  std::string y, routing, gates;
  std::vector<int64_t> lead;  // the leading axes of the files: {T} or {B, N}
  // The fields errors about each file name (FieldError; the commands' option names differ).
  std::string y_field = "moe_out", routing_field = "moe_routing_out", gates_field = "moe_gates_out";
  bool any() const { return !y.empty() || !routing.empty() || !gates.empty(); }
};

// Streams every rank's rows to rank 0 (one rank at a time); rank 0 writes
// them to the files (uncommitted) and, with check_rows > 0, checks them
// against the float64 reference. x: this rank's input rows. Every rank calls it.
// Returns the check on rank 0 (with check_rows > 0).
class MoeCollector {
 public:
  // Rank 0 opens the files (temporaries); the others hold nothing.
  MoeCollector(Communicator& comm, const MoeSetup& setup, const MoeOutputPaths& paths,
               int64_t check_rows);
  // Every rank: stream this rank's rows (x, y, routing, gates) to rank 0.
  void gather(const MoeRank& r, const float* x);
  // Rank 0: the check (after gather) of the last pass: its global figures and bias.
  MoeCheck check(const MoeMetrics& last, const std::vector<float>& bias) const;
  void commit();  // rank 0: the files into place
  static void check_writable(const MoeOutputPaths& paths);

 private:
  void take(const int64_t* index, int64_t rows, const float* x, const float* y,
            const int32_t* routing, const float* gates);
  Communicator& comm_;
  MoeSetup setup_;
  int64_t check_rows_ = 0;
  std::optional<NpyOutFile> y_, routing_, gates_;
  // The check's inputs on rank 0: all X, all routing and gates, the sampled Y rows.
  std::vector<float> x_all_, gates_all_;
  std::vector<int32_t> routing_all_;
  std::vector<int64_t> sample_;  // sampled tokens, ascending
  std::vector<float> y_sample_;  // [sample, d_model]
};

}  // namespace ringattn::job
