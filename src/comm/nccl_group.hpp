// Keeping an NCCL group balanced on every path. Plain C++ (no NCCL header):
// the start and end calls come in as function pointers, so host tests can
// count them without a GPU.
//
// ncclGroupStart() raises a per-thread group depth; until the matching
// ncclGroupEnd() every NCCL call of that thread is only queued. A throw
// between the two (a failed ncclSend, say) would leave the depth raised: the
// thread's next collectives would queue forever and the job would hang.
#pragma once

namespace ringattn {

// Starts a group on construction; close() ends it and returns the end call's
// result (0 = success) for the caller to check. Left without close() (an
// exception), the destructor ends it and ignores the result: the group is
// already failing, and the error on its way out is the one to report.
template <class Result>
class GroupScope {
 public:
  using Call = Result (*)();
  GroupScope(Call start, Call end) : end_(end), started_(start()) {}
  GroupScope(const GroupScope&) = delete;
  GroupScope& operator=(const GroupScope&) = delete;
  ~GroupScope() {
    if (open()) end_();
  }

  // The start call's result: 0 when the group is open (only then end it).
  Result started() const { return started_; }
  bool open() const { return started_ == Result{} && !closed_; }

  // Ends the group once; later calls return success without calling it again.
  Result close() {
    if (!open()) return Result{};
    closed_ = true;
    return end_();
  }

 private:
  Call end_;
  Result started_;
  bool closed_ = false;
};

}  // namespace ringattn
