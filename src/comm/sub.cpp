// Sub-communicators built on a parent's point-to-point messages (ringattn/comm.hpp).
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "ringattn/comm.hpp"
#include "ringattn/error.hpp"

namespace ringattn {
namespace {

class SubCommunicator final : public Communicator {
 public:
  SubCommunicator(Communicator& parent, std::vector<int> members, int tag_base)
      : parent_(parent), members_(std::move(members)), base_(tag_base) {
    const auto it = std::find(members_.begin(), members_.end(), parent.rank());
    if (it == members_.end())
      throw Error(fmt::format("sub-communicator: rank {} is not among its members", parent.rank()));
    rank_ = static_cast<int>(it - members_.begin());
    for (int m : members_)
      if (m < 0 || m >= parent.size())
        throw Error(
            fmt::format("sub-communicator: member {} of a communicator of {}", m, parent.size()));
  }

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(members_.size()); }
  std::string backend() const override { return parent_.backend(); }

  Request isend(const void* buf, std::size_t bytes, int dest, int tag) override {
    return parent_.isend(buf, bytes, parent_rank(dest), user_tag(tag));
  }
  Request irecv(void* buf, std::size_t bytes, int src, int tag) override {
    return parent_.irecv(buf, bytes, parent_rank(src), user_tag(tag));
  }

  void allreduce(double* data, std::size_t n, ReduceOp op) override { reduce(data, n, op); }
  void allreduce(int64_t* data, std::size_t n, ReduceOp op) override { reduce(data, n, op); }

  void allgather(const void* in, std::size_t bytes, void* out) override {
    allgatherv(in, std::vector<std::size_t>(members_.size(), bytes), out);
  }
  void allgatherv(const void* in, const std::vector<std::size_t>& counts, void* out) override {
    const int p = size();
    std::vector<std::size_t> at(counts.size() + 1, 0);
    for (std::size_t r = 0; r < counts.size(); ++r) at[r + 1] = at[r] + counts[r];
    std::vector<Request> reqs;
    for (int r = 0; r < p; ++r) {
      if (r == rank_) continue;
      reqs.push_back(parent_.irecv(static_cast<char*>(out) + at[idx(r)], counts[idx(r)],
                                   parent_rank(r), base_ + kGather));
      reqs.push_back(parent_.isend(in, counts[idx(rank_)], parent_rank(r), base_ + kGather));
    }
    local_copy(static_cast<char*>(out) + at[idx(rank_)], in, counts[idx(rank_)]);
    for (Request& q : reqs) q.wait();
  }
  void alltoallv(const void* in, const std::vector<std::size_t>& send_counts, void* out,
                 const std::vector<std::size_t>& recv_counts) override {
    const int p = size();
    std::vector<std::size_t> so(send_counts.size() + 1, 0), ro(recv_counts.size() + 1, 0);
    for (std::size_t r = 0; r < send_counts.size(); ++r) so[r + 1] = so[r] + send_counts[r];
    for (std::size_t r = 0; r < recv_counts.size(); ++r) ro[r + 1] = ro[r] + recv_counts[r];
    std::vector<Request> reqs;
    for (int r = 0; r < p; ++r) {
      if (r == rank_) continue;
      reqs.push_back(parent_.irecv(static_cast<char*>(out) + ro[idx(r)], recv_counts[idx(r)],
                                   parent_rank(r), base_ + kAllToAll));
      reqs.push_back(parent_.isend(static_cast<const char*>(in) + so[idx(r)], send_counts[idx(r)],
                                   parent_rank(r), base_ + kAllToAll));
    }
    local_copy(static_cast<char*>(out) + ro[idx(rank_)],
               static_cast<const char*>(in) + so[idx(rank_)], send_counts[idx(rank_)]);
    for (Request& q : reqs) q.wait();
  }
  void barrier() override {
    int64_t x = 0;
    reduce(&x, 1, ReduceOp::sum);
  }
  [[noreturn]] void abort(const std::string& message, int exit_code) override {
    parent_.abort(message, exit_code);
    std::abort();  // not reached: the parent's abort does not return
  }

 private:
  // Tags of the collectives, at the top of this level's range.
  static constexpr int kReduce = kSubTagSpan - 1, kBcast = kSubTagSpan - 2,
                       kGather = kSubTagSpan - 3, kAllToAll = kSubTagSpan - 4;

  static std::size_t idx(int r) { return static_cast<std::size_t>(r); }
  int parent_rank(int r) const {
    if (r < 0 || r >= size())
      throw Error(fmt::format("sub-communicator: rank {} of {}", r, size()));
    return members_[idx(r)];
  }
  int user_tag(int tag) const {
    if (tag < 0 || tag >= kSubTagSpan - 16)
      throw Error(fmt::format("sub-communicator: tag {} outside [0, {})", tag, kSubTagSpan - 16));
    return base_ + tag;
  }
  // Own contribution: the parent's isend/irecv to itself would do too; a
  // plain copy is what every backend's host buffers allow (collectives here
  // run on host values and host staging buffers).
  void local_copy(void* dst, const void* src, std::size_t bytes) {
    if (bytes > 0 && dst != src) {
      Request r = parent_.irecv(dst, bytes, parent_.rank(), base_ + kSelf);
      Request s = parent_.isend(src, bytes, parent_.rank(), base_ + kSelf);
      s.wait();
      r.wait();
    }
  }
  static constexpr int kSelf = kSubTagSpan - 5;

  template <class T>
  void reduce(T* data, std::size_t n, ReduceOp op) {
    const int p = size();
    const std::size_t bytes = n * sizeof(T);
    if (rank_ != 0) {
      parent_.isend(data, bytes, members_[0], base_ + kReduce).wait();
      parent_.irecv(data, bytes, members_[0], base_ + kBcast).wait();
      return;
    }
    std::vector<T> part(n);
    for (int r = 1; r < p; ++r) {  // in sub-rank order: the same bits on every member
      parent_.irecv(part.data(), bytes, parent_rank(r), base_ + kReduce).wait();
      for (std::size_t i = 0; i < n; ++i) {
        switch (op) {
          case ReduceOp::sum:
            data[i] += part[i];
            break;
          case ReduceOp::max:
            data[i] = std::max(data[i], part[i]);
            break;
          case ReduceOp::min:
            data[i] = std::min(data[i], part[i]);
            break;
        }
      }
    }
    std::vector<Request> reqs;
    for (int r = 1; r < p; ++r)
      reqs.push_back(parent_.isend(data, bytes, parent_rank(r), base_ + kBcast));
    for (Request& q : reqs) q.wait();
  }

  Communicator& parent_;
  std::vector<int> members_;
  int base_;
  int rank_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_sub_communicator(Communicator& parent, std::vector<int> members,
                                                    int tag_base) {
  return std::make_unique<SubCommunicator>(parent, std::move(members), tag_base);
}

}  // namespace ringattn
