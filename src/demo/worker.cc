#include "demo/worker.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "base/log.h"
#include "demo/instance.h"
#include "demo/registry_client.h"
#include "net/http_server.h"

namespace haven::demo {

namespace {

constexpr int kStartThreads = 8;  // instances registered in parallel at start and stop
constexpr size_t kHeartbeatThreads = 8;
constexpr int kMaxHeartbeatFailures = 3;  // in a row: the agent node is down, end the round
constexpr int kStartAttempts = 60;        // per instance, 500 ms apart: the agent may be restarting

// Runs fn(i) for i in [0, n) on up to kStartThreads threads.
void ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kStartThreads; ++t) {
    threads.emplace_back([&] {
      for (size_t i = next++; i < n; i = next++) fn(i);
    });
  }
  for (auto& t : threads) t.join();
}

// The instances of one worker, and the registry client each thread uses for them.
class Fleet {
 public:
  Fleet(net::IoRuntime& runtime, const WorkerOptions& o) : options_(o) {
    // Agent endpoints (register, check pass, deregister) act on the node they are sent to, as in
    // Consul: a worker talks to one node, its agent, and never fails over to another (a copy of
    // an instance registered on a second node would outlive it there, heartbeats going elsewhere).
    options_.registries = {o.registries[o.worker % o.registries.size()]};
    for (const InstanceRef& ref : InstancesOfWorker(o.worker, o.services, o.instances, o.workers)) {
      InstanceConfig c{ref,      o.services,         o.work_dir, o.amqp, options_.registries,
                       o.ttl_ms, o.check_interval_ms};
      auto inst = std::make_unique<Instance>(runtime, c);
      by_id_[inst->id()] = inst.get();
      all_.push_back(std::move(inst));
    }
  }

  // Starts every instance; the first error, if any.
  Status StartAll() {
    std::mutex mu;
    Status first;
    ParallelFor(all_.size(), [&](size_t i) {
      RegistryClient reg(options_.registries);
      Status s = all_[i]->Start(reg);
      for (int attempt = 1; !s.ok() && attempt < kStartAttempts; ++attempt) {
        std::this_thread::sleep_for(std::chrono::milliseconds(500));  // backoff between attempts
        s = all_[i]->Start(reg);
      }
      std::lock_guard lock(mu);
      if (!s.ok() && first.ok()) first = s;
    });
    return first;
  }

  void StopAndDeregisterAll() {
    for (auto& inst : all_) inst->Interrupt();
    for (auto& inst : all_) inst->Kill();
    ParallelFor(all_.size(), [&](size_t i) {
      RegistryClient reg(options_.registries, 2000);
      (void)reg.Deregister(all_[i]->id());
    });
  }

  // One round of TTL heartbeats over every slices-th instance from `slice`. Failures in a row end
  // the round: waiting out a timeout per instance would starve the rest; the next round comes a
  // third of a TTL after this one started.
  void HeartbeatSlice(RegistryClient& reg, size_t slice, size_t slices) {
    int failed = 0;
    for (size_t i = slice; i < all_.size(); i += slices) {
      Instance& inst = *all_[i];
      if (!inst.up()) continue;
      Status s = reg.Heartbeat(inst.id());
      if (s.ok()) {
        failed = 0;
        continue;
      }
      HLOG_WARN("demo_heartbeat_failed", "instance={} error=\"{}\"", inst.id(), s.ToString());
      if (++failed >= kMaxHeartbeatFailures) return;
    }
  }

  const std::vector<std::string>& agent() const { return options_.registries; }

  net::HttpResponse Control(const net::HttpRequest& req) {
    net::HttpResponse r;
    r.content_type = "text/plain";
    const bool kill = req.path.starts_with("/kill/");
    const bool start = req.path.starts_with("/start/");
    if (req.method != "POST" || (!kill && !start)) {
      r.status = 404;
      r.body = "POST /kill/ID or /start/ID\n";
      return r;
    }
    auto it = by_id_.find(req.path.substr(kill ? 6 : 7));
    if (it == by_id_.end()) {
      r.status = 404;
      r.body = "no such instance\n";
      return r;
    }
    std::lock_guard lock(control_mu_);
    if (kill) {
      it->second->Kill();
      HLOG_INFO("demo_instance_killed", "instance={}", it->first);
      r.body = "killed\n";
      return r;
    }
    RegistryClient reg(options_.registries);
    Status s = it->second->Start(reg);
    HLOG_INFO("demo_instance_started", "instance={} ok={}", it->first, s.ok());
    r.status = s.ok() ? 200 : 503;
    r.body = s.ok() ? "started\n" : s.ToString() + "\n";
    return r;
  }

 private:
  WorkerOptions options_;
  std::vector<std::unique_ptr<Instance>> all_;
  std::map<std::string, Instance*> by_id_;
  std::mutex control_mu_;
};

Status WriteReadyFile(const std::string& path, const std::string& control) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << "control=" << control << "\npid=" << getpid() << "\n";
    if (!f.good()) return Status::IoError("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return Status::IoError("cannot rename " + tmp);
  return Status::Ok();
}

}  // namespace

std::string ReadWorkerControlAddress(const std::string& ready_path) {
  std::ifstream f(ready_path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.starts_with("control=")) return line.substr(8);
  }
  return "";
}

int RunWorker(const WorkerOptions& o) {
  net::IoRuntime runtime(2);
  net::IoRuntime control_runtime(1);
  runtime.Start();
  control_runtime.Start();
  Fleet fleet(runtime, o);
  if (Status s = fleet.StartAll(); !s.ok()) {
    HLOG_ERROR("demo_worker_start_failed", "worker={} error=\"{}\"", o.worker, s.ToString());
    fleet.StopAndDeregisterAll();
    return 1;
  }
  net::HttpServerOptions so;
  so.host = "127.0.0.1";
  so.port = 0;
  so.max_connections = 16;
  net::HttpServer control(control_runtime, so, [&fleet](net::HttpRequest req, net::Responder rsp) {
    rsp(fleet.Control(req));
  });
  if (Status s = control.Start(); !s.ok()) {
    HLOG_ERROR("demo_worker_control_failed", "error=\"{}\"", s.ToString());
    fleet.StopAndDeregisterAll();
    return 1;
  }
  if (Status s = WriteReadyFile(WorkerReadyPath(o.work_dir, o.worker), control.address());
      !s.ok()) {
    HLOG_ERROR("demo_worker_ready_failed", "error=\"{}\"", s.ToString());
    fleet.StopAndDeregisterAll();
    return 1;
  }
  HLOG_INFO("demo_worker_ready", "worker={} control={}", o.worker, control.address());

  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
  // Heartbeats on several threads: one round must stay well inside a TTL even when the agent
  // answers slowly (each heartbeat is forwarded to the leader; after a leader change a round of
  // 100 one at a time took 10 s here, and TTLs expired).
  std::vector<std::thread> heartbeats;
  for (size_t t = 0; t < kHeartbeatThreads; ++t) {
    heartbeats.emplace_back([&, t] {
      RegistryClient reg(fleet.agent(), 2000);
      std::unique_lock lock(mu);
      while (!stop.load()) {
        const auto next =
            std::chrono::steady_clock::now() + std::chrono::milliseconds(o.ttl_ms / 3);
        lock.unlock();
        fleet.HeartbeatSlice(reg, t, kHeartbeatThreads);
        lock.lock();
        cv.wait_until(lock, next, [&] { return stop.load(); });
      }
    });
  }

  int sig = net::IoRuntime::WaitForSignal({SIGINT, SIGTERM});
  HLOG_INFO("demo_worker_stopping", "worker={} signal={}", o.worker, sig);
  {
    std::lock_guard lock(mu);
    stop = true;
  }
  cv.notify_all();
  for (auto& t : heartbeats) t.join();
  control.Stop();
  fleet.StopAndDeregisterAll();
  control_runtime.Stop();
  runtime.Stop();
  return 0;
}

}  // namespace haven::demo
