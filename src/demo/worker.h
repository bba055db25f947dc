// The demo's worker process (`haven demo-worker`): hosts many service instances, heartbeats their
// TTL checks, and takes kill/start orders from the orchestrator on a small control HTTP API.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace haven::demo {

struct WorkerOptions {
  std::string work_dir;
  int worker = 0;  // this worker's number, 0..workers-1
  int workers = 3;
  int services = 100;
  int instances = 3;
  std::vector<std::string> amqp;        // HOST:PORT of every broker node
  std::vector<std::string> registries;  // http://HOST:PORT of every registry node
  int64_t ttl_ms = 10000;
  int64_t check_interval_ms = 1000;
};

// Runs until SIGTERM/SIGINT, then stops every instance, deregisters them and returns 0. Returns 1
// when the instances could not be started.
int RunWorker(const WorkerOptions& options);

// The control API address a started worker writes to its ready file (WorkerReadyPath), "" when
// the file is absent or incomplete.
std::string ReadWorkerControlAddress(const std::string& ready_path);

}  // namespace haven::demo
