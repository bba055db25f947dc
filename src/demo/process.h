// Children: the processes the demo starts (servers, proxy, workers), all in one process group of
// their own, each one's PID written to a file, each killed and reaped by PID.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/status.h"

namespace haven::demo {

class Children {
 public:
  // `pids_path`: every PID started is appended there ("ROLE PID" lines), for whoever checks that
  // none is left behind.
  explicit Children(std::string pids_path);
  ~Children();  // KillAll(0)
  Children(const Children&) = delete;
  Children& operator=(const Children&) = delete;

  // fork/exec of argv with stdout and stderr appended to `log_path`. The child dies with this
  // thread (PR_SET_PDEATHSIG): call from the thread that lives as long as the demo.
  Result<pid_t> Spawn(const std::string& role, const std::vector<std::string>& argv,
                      const std::string& log_path);
  // Sends `sig` to a running child. No-op for an unknown or reaped PID.
  void Signal(pid_t pid, int sig);
  // Reaps `pid` if it exited within `deadline_ms`; true when it is gone.
  bool WaitExit(pid_t pid, int64_t deadline_ms);
  // SIGKILL and reap one child.
  void Kill(pid_t pid);
  // SIGTERM to `pids` (all when empty), up to `grace_ms` for them to exit, then SIGKILL to the
  // rest and to the whole group; reaps everything.
  void Terminate(const std::vector<pid_t>& pids, int64_t grace_ms);
  void KillAll(int64_t grace_ms) { Terminate({}, grace_ms); }
  // Reaps children that died by themselves; returns their roles.
  std::vector<std::string> ReapExited();
  bool running(pid_t pid) const { return live_.count(pid) > 0; }
  std::vector<pid_t> live() const;
  // Resident memory of every live child plus this process, in KiB (from /proc).
  int64_t TotalRssKb() const;

 private:
  std::string pids_path_;
  pid_t pgid_ = 0;                     // the group of the first child; the others join it
  std::map<pid_t, std::string> live_;  // pid -> role
};

// The path of the running binary (/proc/self/exe), to start the demo's children with.
std::string SelfExe();
// Ports on 127.0.0.1 that were free a moment ago (all bound at once, then released), at most 64.
Result<std::vector<int>> FreePorts(int count);

}  // namespace haven::demo
