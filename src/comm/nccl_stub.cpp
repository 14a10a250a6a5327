// make_nccl where ringattn was built without NCCL (no CUDA, or nccl.h /
// libnccl not found at configure time).
#include "ringattn/comm_nccl.hpp"
#include "ringattn/error.hpp"

namespace ringattn {

bool nccl_built() {
  return false;
}

std::unique_ptr<Communicator> make_nccl(Communicator&, int) {
  throw Error(
      "the NCCL backend is not built in: configure with CUDA on where nccl.h and libnccl are "
      "found (NCCL_INCLUDE_DIR, NCCL_LIBRARY)");
}

}  // namespace ringattn
