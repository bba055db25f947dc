// `haven demo`: runs the whole system on one machine (registry/broker nodes, a proxy, worker
// processes hosting every service instance), drives load through the proxy while chaos kills and
// restarts instances, then checks that nothing acknowledged was lost and reports the figures.
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"

namespace haven::demo {

struct DemoOptions {
  int services = 100;
  int instances = 3;
  int workers = 3;
  int cluster = 1;  // registry/broker nodes: 1 or 3
  int64_t duration_s = 30;
  int concurrency = 32;
  double write_fraction = 0.5;
  bool chaos = true;
  bool chaos_leader = false;
  double kill_rate = 0.5;  // kills per second
  uint64_t seed = 0;       // 0: from the clock
  std::string work_dir;    // "": a new folder under /tmp
  bool keep = false;       // keep the work folder afterwards
  std::string json;        // write the report there too
  int64_t drain_timeout_s = 30;
  int64_t ttl_ms = 10000;
  int64_t check_interval_ms = 1000;
  std::string binary;  // the haven binary for the children ("": this one)
};

// The limits every flag is held to; a clear message for the first one broken.
Status ValidateDemoOptions(const DemoOptions& options);

// Runs the demo; the exit code: 0 when the run met the bar (no client-visible failure, nothing
// lost), 1 when it did not, 2 on bad options or a failed start, 130 when interrupted.
int RunDemo(DemoOptions options);

}  // namespace haven::demo
