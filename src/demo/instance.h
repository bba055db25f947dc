// Instance: one demo service instance inside a worker process: its own HTTP listener, its own
// SQLite connection to its service's database, an AMQP producer for the events its writes cause
// and a consumer for the events other services send it. Kill() stops it abruptly (as a crash
// would, without deregistering); Start() brings it back on a new port.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "demo/layout.h"
#include "net/io_runtime.h"

namespace haven::demo {

class RegistryClient;

struct InstanceConfig {
  InstanceRef ref;
  int services = 0;
  std::string work_dir;
  std::vector<std::string> amqp;        // HOST:PORT of every broker node
  std::vector<std::string> registries;  // http://HOST:PORT of every registry node
  int64_t ttl_ms = 10000;
  int64_t check_interval_ms = 1000;
};

class Instance {
 public:
  Instance(net::IoRuntime& runtime, InstanceConfig config);
  ~Instance();  // Kill()s
  Instance(const Instance&) = delete;
  Instance& operator=(const Instance&) = delete;

  // Opens the database, listens on an ephemeral port, starts the event threads, registers.
  Status Start(RegistryClient& registry);
  // Abrupt stop: listener and connections closed, threads stopped, pending writes unanswered.
  void Kill();
  // The first half of Kill() without waiting for the threads: lets a worker stop all its
  // instances at once, then Kill() each.
  void Interrupt();
  bool up() const;
  const std::string& id() const { return id_; }

  struct Live;  // everything one Start..Kill lives for (instance.cc)

 private:
  Status Listen(Live& live);

  net::IoRuntime& runtime_;
  uint16_t last_port_ = 0;  // 0: none yet
  InstanceConfig config_;
  std::string id_;
  mutable std::mutex mu_;
  std::shared_ptr<Live> live_;
};

// Limits of the instance's HTTP API.
inline constexpr size_t kMaxKeyBytes = 128;
inline constexpr size_t kMaxValueBytes = 4096;
inline constexpr size_t kMaxQueuedWrites = 10000;

// True for keys of 1..kMaxKeyBytes of [A-Za-z0-9._-].
bool IsValidKey(const std::string& key);

}  // namespace haven::demo
