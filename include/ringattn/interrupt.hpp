// Stopping a computation early: a binding's Ctrl-C. request_interrupt() (from
// any thread) makes the CPU kernel skip the tasks it has not started and
// throw Interrupted when its call ends, and the ring loop throw Interrupted at
// its next step (in-process ranks then end the job like any rank's error). The
// flag is process-wide; whoever requested it clears it once the call is over.
#pragma once

#include "ringattn/error.hpp"

namespace ringattn {

class Interrupted : public Error {
 public:
  Interrupted() : Error("interrupted") {}
};

void request_interrupt();
void clear_interrupt();
bool interrupt_requested();
// Throws Interrupted when an interrupt was requested.
void throw_if_interrupted();

}  // namespace ringattn
