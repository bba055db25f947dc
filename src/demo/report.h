// The demo's report: the figures of one run, the data check that fills some of them, and their
// text and JSON forms.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "demo/load.h"

namespace haven::demo {

struct Report {
  int services = 0;
  int instances = 0;
  int cluster = 1;
  double duration_s = 0;
  uint64_t requests = 0, successes = 0, failures = 0, reads = 0, writes = 0;
  double p50_ms = 0, p99_ms = 0, p999_ms = 0;
  uint64_t acked_writes = 0, lost_writes = 0;
  uint64_t events_published = 0, events_consumed = 0, events_lost = 0;
  uint64_t kills = 0, instance_kills = 0, worker_kills = 0, leader_kills = 0, restarts = 0;
  uint64_t failovers = 0, retries = 0;  // from the proxy's metrics
  double kill_to_leave_avg_ms = 0, kill_to_leave_max_ms = 0;
  uint64_t kill_to_leave_samples = 0;
  double peak_rss_mb = 0;
  std::vector<std::string> failure_samples;
  std::vector<std::string> notes;  // what went wrong around the run (a check that timed out, ...)

  bool Passed() const { return failures == 0 && lost_writes == 0 && events_lost == 0; }
  std::string ToText() const;
  std::string ToJson() const;
};

// What the final data check found in the services' databases.
struct DataCheck {
  uint64_t lost_writes = 0;       // acknowledged writes missing or different in their database
  uint64_t events_published = 0;  // events confirmed by the broker (distinct ids)
  uint64_t events_consumed = 0;   // distinct events recorded by their consuming service
  uint64_t events_lost = 0;       // confirmed but not recorded by the service they were sent to
};

// Reads every service's database (WORK/db/svc-NNN.db) directly.
Result<DataCheck> CheckData(const std::string& work_dir, int services,
                            const std::vector<AckedWrite>& acked);

}  // namespace haven::demo
