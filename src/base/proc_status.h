// ProcStatusKiB: a memory figure of a live process from Linux's /proc/PID/status, for the tools
// and tests that watch a process's footprint (VmRSS now, VmHWM its peak).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string_view>

namespace haven {

// The value of `field` ("VmRSS", "VmHWM", ...) of process `pid` in KiB; -1 when the process or the
// field cannot be read.
int64_t ProcStatusKiB(pid_t pid, std::string_view field);

}  // namespace haven
