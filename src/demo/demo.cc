#include "demo/demo.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <boost/json.hpp>

#include "base/log.h"
#include "demo/layout.h"
#include "demo/load.h"
#include "demo/process.h"
#include "demo/registry_client.h"
#include "demo/report.h"
#include "demo/sqlite_db.h"
#include "demo/worker.h"
#include "net/http_client.h"

namespace haven::demo {

namespace fs = std::filesystem;

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void OnSignal(int) { g_interrupted = 1; }

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

constexpr int64_t kTickMs = 100;
constexpr int64_t kStartDeadlineMs = 60000;
constexpr int64_t kLeaveMeasurePollMs = 200;
constexpr size_t kMaxLeaveMeasuresPerKill = 10;
constexpr int64_t kLeaderKillEveryMs = 10000;

// Waits kTickMs, or less when interrupted. The main loop's only pause.
void Tick() {
  if (!g_interrupted) std::this_thread::sleep_for(std::chrono::milliseconds(kTickMs));
}

// Polls `done` every tick until it is true, the deadline passes or the demo is interrupted.
bool WaitUntil(const std::function<bool()>& done, int64_t deadline_ms) {
  const int64_t end = NowMs() + deadline_ms;
  while (!g_interrupted) {
    if (done()) return true;
    if (NowMs() >= end) return false;
    Tick();
  }
  return false;
}

// The sum over every series of a Prometheus counter.
double SumMetric(const std::string& text, const std::string& name) {
  double sum = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    if (line.starts_with(name) && line.size() > name.size() &&
        (line[name.size()] == '{' || line[name.size()] == ' ')) {
      size_t sp = line.rfind(' ');
      if (sp != std::string_view::npos) sum += std::atof(std::string(line.substr(sp + 1)).c_str());
    }
    pos = end + 1;
  }
  return sum;
}

struct InstanceState {
  bool down = false;  // killed on its own (its worker may be up)
  int64_t restart_at = 0;
  int64_t killed_at = 0;
  bool measuring = false;  // waiting to see it leave the registry's passing list
};

struct WorkerState {
  pid_t pid = -1;
  bool down = false;      // SIGKILLed, waiting for its restart
  bool starting = false;  // spawned, waiting for its ready file
  int64_t restart_at = 0;
  std::unique_ptr<net::HttpClient> control;
};

struct ServerState {
  pid_t pid = -1;
  bool down = false;
  int64_t restart_at = 0;
  int http = 0, amqp = 0, raft = 0;
};

class Demo {
 public:
  explicit Demo(DemoOptions o)
      : o_(std::move(o)), rng_(o_.seed), instances_(o_.services * o_.instances) {}
  int Run();

 private:
  Status Prepare();
  Status StartServers();
  std::vector<std::string> ServerArgs(int i) const;
  Status StartProxy();
  Status StartWorker(int w);
  bool PollWorkerReady(int w);
  Status WarmUp();
  void RunLoad();
  void ChaosTick(int64_t now);
  void KillSomething(int64_t now);
  bool KillInstance(int64_t now);
  bool KillWorker(int64_t now);
  void KillLeader(int64_t now);
  void RestartDue(int64_t now);
  void MeasureLeaves(int64_t now);
  bool AllUp() const;
  int UpInstances() const;
  bool InstanceUp(int idx) const;
  void Progress(int64_t elapsed_ms, bool final_line);
  void SampleRss();
  Status Drain();
  void ReadProxyMetrics();
  void NoteBusyQueues();
  void Shutdown(bool fast);
  std::string Url(int server) const {
    return fmt::format("http://127.0.0.1:{}", servers_[server].http);
  }
  std::vector<std::string> RegistryUrls() const;
  std::vector<std::string> AmqpAddresses() const;
  std::string Log(const std::string& name) const { return o_.work_dir + "/logs/" + name + ".log"; }
  void Note(std::string n) {
    HLOG_WARN("demo_note", "note=\"{}\"", n);
    report_.notes.push_back(std::move(n));
  }

  DemoOptions o_;
  std::mt19937_64 rng_;
  std::unique_ptr<Children> children_;
  std::vector<ServerState> servers_;
  std::vector<WorkerState> workers_;
  std::vector<InstanceState> instances_;  // service * instances + index
  pid_t proxy_pid_ = -1;
  int proxy_port_ = 0, admin_port_ = 0;
  std::unique_ptr<LoadGenerator> load_;
  std::unique_ptr<RegistryClient> registry_;
  Report report_;
  int64_t next_kill_at_ = 0, next_leader_kill_at_ = 0, next_measure_at_ = 0;
  double leave_sum_ms_ = 0;
  int64_t peak_rss_kb_ = 0;
  bool tty_ = false;
  LatencyHistogram::Counts last_counts_{};
  uint64_t last_requests_ = 0;
  int64_t last_progress_ms_ = 0;
};

Status Demo::Prepare() {
  if (o_.work_dir.empty()) {
    char tmpl[] = "/tmp/haven-demo-XXXXXX";
    if (!mkdtemp(tmpl)) return Status::IoError("cannot create a work folder under /tmp");
    o_.work_dir = tmpl;
  } else {
    std::error_code ec;
    if (fs::exists(o_.work_dir, ec) && !fs::is_empty(o_.work_dir, ec)) {
      return Status::InvalidArgument("--work-dir " + o_.work_dir + " is not empty");
    }
    fs::create_directories(o_.work_dir, ec);
    if (ec) return Status::IoError("cannot create " + o_.work_dir + ": " + ec.message());
  }
  o_.work_dir = fs::absolute(o_.work_dir).string();
  std::error_code ec;
  fs::create_directories(o_.work_dir + "/db", ec);
  fs::create_directories(o_.work_dir + "/logs", ec);
  if (ec) return Status::IoError("cannot create folders in " + o_.work_dir);
  for (int s = 0; s < o_.services; ++s) {
    SqliteDb db;
    if (Status st = db.Open(DbPath(o_.work_dir, s), true); !st.ok()) return st;
    if (Status st = db.CreateSchema(); !st.ok()) return st;
  }
  children_ = std::make_unique<Children>(o_.work_dir + "/pids");
  if (o_.binary.empty()) o_.binary = SelfExe();
  return Status::Ok();
}

std::vector<std::string> Demo::RegistryUrls() const {
  std::vector<std::string> urls;
  for (size_t i = 0; i < servers_.size(); ++i) urls.push_back(Url(static_cast<int>(i)));
  return urls;
}

std::vector<std::string> Demo::AmqpAddresses() const {
  std::vector<std::string> a;
  for (const ServerState& s : servers_) a.push_back(fmt::format("127.0.0.1:{}", s.amqp));
  return a;
}

std::vector<std::string> Demo::ServerArgs(int i) const {
  const ServerState& s = servers_[i];
  std::vector<std::string> argv = {
      o_.binary, "server", "--data-dir", fmt::format("{}/server-{}", o_.work_dir, i + 1), "--http",
      fmt::format("127.0.0.1:{}", s.http), "--amqp", fmt::format("127.0.0.1:{}", s.amqp),
      "--node-name", fmt::format("node-{}", i + 1),
      // info: leader changes and check status changes, to tell why
      // an instance left the passing list
      "--log-level", "info"};
  if (o_.cluster > 1) {
    std::string peers;
    for (size_t j = 0; j < servers_.size(); ++j) {
      peers += fmt::format("{}{}=127.0.0.1:{}", j ? "," : "", j + 1, servers_[j].raft);
    }
    for (std::string a : {std::string("--node-id"), std::to_string(i + 1), std::string("--raft"),
                          fmt::format("127.0.0.1:{}", s.raft), std::string("--peers"), peers}) {
      argv.push_back(a);
    }
  }
  return argv;
}

Status Demo::StartServers() {
  auto ports = FreePorts(o_.cluster * 3 + 2);
  if (!ports.ok()) return ports.status();
  servers_.resize(o_.cluster);
  for (int i = 0; i < o_.cluster; ++i) {
    servers_[i].http = (*ports)[i * 3];
    servers_[i].amqp = (*ports)[i * 3 + 1];
    servers_[i].raft = (*ports)[i * 3 + 2];
  }
  proxy_port_ = (*ports)[o_.cluster * 3];
  admin_port_ = (*ports)[o_.cluster * 3 + 1];
  for (int i = 0; i < o_.cluster; ++i) {
    auto pid = children_->Spawn(fmt::format("server-{}", i + 1), ServerArgs(i),
                                Log(fmt::format("server-{}", i + 1)));
    if (!pid.ok()) return pid.status();
    servers_[i].pid = *pid;
  }
  registry_ = std::make_unique<RegistryClient>(RegistryUrls(), 5000);
  // Ready when a write commits through every node (a follower forwards it to the leader).
  for (int i = 0; i < o_.cluster; ++i) {
    net::HttpClient http(Url(i), 2000);
    bool ok = WaitUntil(
        [&] {
          auto r = http.Request("PUT", "/v1/kv/haven-demo/ready", "1");
          return r.ok() && r->status == 200;
        },
        kStartDeadlineMs);
    if (!ok)
      return Status::Unavailable(fmt::format("server {} did not become ready (log: {})", i + 1,
                                             Log(fmt::format("server-{}", i + 1))));
  }
  return Status::Ok();
}

Status Demo::StartProxy() {
  std::string yaml = fmt::format(
      "threads: 2\nadmin: 127.0.0.1:{}\nlisteners:\n  - listen: 127.0.0.1:{}\n    routes:\n",
      admin_port_, proxy_port_);
  for (int s = 0; s < o_.services; ++s) {
    yaml +=
        fmt::format("      - path: /{}/\n        cluster: {}\n", ServiceName(s), ServiceName(s));
  }
  yaml += "clusters:\n";
  // Every node: the proxy's discovery moves to the next one when the node it watches through is
  // killed or answers "not leader" (docs/proxy.md).
  std::string registry;
  for (const std::string& u : RegistryUrls()) registry += (registry.empty() ? "" : ",") + u;
  for (int s = 0; s < o_.services; ++s) {
    yaml += fmt::format(
        "  - name: {0}\n    service: {0}\n    registry: {1}\n    per-try-timeout: 10s\n"
        "    timeout: 30s\n    connect-timeout: 500ms\n",
        ServiceName(s), registry);
  }
  const std::string path = o_.work_dir + "/proxy.yaml";
  {
    std::ofstream f(path, std::ios::trunc);
    f << yaml;
    if (!f.good()) return Status::IoError("cannot write " + path);
  }
  auto pid = children_->Spawn(
      "proxy", {o_.binary, "proxy", "--config", path, "--log-level", "info"}, Log("proxy"));
  if (!pid.ok()) return pid.status();
  proxy_pid_ = *pid;
  net::HttpClient admin(fmt::format("http://127.0.0.1:{}", admin_port_), 2000);
  bool ok = WaitUntil(
      [&] {
        auto r = admin.Request("GET", "/status");
        return r.ok() && r->status == 200;
      },
      kStartDeadlineMs);
  return ok ? Status::Ok()
            : Status::Unavailable("the proxy did not start (log: " + Log("proxy") + ")");
}

Status Demo::StartWorker(int w) {
  std::remove(WorkerReadyPath(o_.work_dir, w).c_str());
  std::vector<std::string> argv = {o_.binary,
                                   "demo-worker",
                                   "--work-dir",
                                   o_.work_dir,
                                   "--worker",
                                   std::to_string(w),
                                   "--workers",
                                   std::to_string(o_.workers),
                                   "--services",
                                   std::to_string(o_.services),
                                   "--instances",
                                   std::to_string(o_.instances),
                                   "--ttl-ms",
                                   std::to_string(o_.ttl_ms),
                                   "--check-interval-ms",
                                   std::to_string(o_.check_interval_ms),
                                   "--log-level",
                                   "warn"};
  for (const std::string& a : AmqpAddresses()) {
    argv.push_back("--amqp");
    argv.push_back(a);
  }
  for (const std::string& u : RegistryUrls()) {
    argv.push_back("--registry");
    argv.push_back(u);
  }
  auto pid = children_->Spawn(fmt::format("worker-{}", w), argv, Log(fmt::format("worker-{}", w)));
  if (!pid.ok()) return pid.status();
  workers_[w].pid = *pid;
  workers_[w].starting = true;
  workers_[w].control.reset();
  return Status::Ok();
}

bool Demo::PollWorkerReady(int w) {
  WorkerState& ws = workers_[w];
  if (!ws.starting) return true;
  std::string control = ReadWorkerControlAddress(WorkerReadyPath(o_.work_dir, w));
  if (control.empty()) return false;
  ws.control = std::make_unique<net::HttpClient>("http://" + control, 10000);
  ws.starting = false;
  ws.down = false;
  return true;
}

Status Demo::WarmUp() {
  // Every service answers through the proxy: its instances registered and the proxy saw them.
  net::HttpClient http(fmt::format("http://127.0.0.1:{}", proxy_port_), 5000);
  for (int s = 0; s < o_.services; ++s) {
    bool ok = WaitUntil(
        [&] {
          auto r = http.Request("GET", "/" + ServiceName(s) + "/health");
          return r.ok() && r->status == 200;
        },
        kStartDeadlineMs);
    if (!ok) return Status::Unavailable(ServiceName(s) + " does not answer through the proxy");
  }
  return Status::Ok();
}

bool Demo::InstanceUp(int idx) const {
  const int w = WorkerOf({idx / o_.instances, idx % o_.instances}, o_.workers);
  return !instances_[idx].down && !workers_[w].down && !workers_[w].starting;
}

int Demo::UpInstances() const {
  int n = 0;
  for (int i = 0; i < static_cast<int>(instances_.size()); ++i) n += InstanceUp(i) ? 1 : 0;
  return n;
}

bool Demo::AllUp() const {
  for (const ServerState& s : servers_) {
    if (s.down) return false;
  }
  return UpInstances() == static_cast<int>(instances_.size());
}

bool Demo::KillInstance(int64_t now) {
  std::vector<int> candidates;
  for (int idx = 0; idx < static_cast<int>(instances_.size()); ++idx) {
    if (!InstanceUp(idx)) continue;
    const int s = idx / o_.instances;
    int up = 0;
    for (int i = 0; i < o_.instances; ++i) up += InstanceUp(s * o_.instances + i) ? 1 : 0;
    if (up >= 2) candidates.push_back(idx);
  }
  if (candidates.empty()) return false;
  const int idx = candidates[std::uniform_int_distribution<size_t>(0, candidates.size() - 1)(rng_)];
  const InstanceRef ref{idx / o_.instances, idx % o_.instances};
  WorkerState& ws = workers_[WorkerOf(ref, o_.workers)];
  auto r = ws.control->Request("POST", "/kill/" + InstanceId(ref));
  if (!r.ok() || r->status != 200) {
    Note("kill " + InstanceId(ref) + " failed: " + (r.ok() ? r->body : r.status().ToString()));
    return false;
  }
  InstanceState& st = instances_[idx];
  st = {true, now + std::uniform_int_distribution<int64_t>(1000, 3000)(rng_), now, true};
  report_.kills++;
  report_.instance_kills++;
  return true;
}

bool Demo::KillWorker(int64_t now) {
  if (o_.workers < o_.instances || !AllUp()) return false;  // then every service keeps an instance
  const int w = std::uniform_int_distribution<int>(0, o_.workers - 1)(rng_);
  children_->Kill(workers_[w].pid);
  workers_[w].down = true;
  workers_[w].control.reset();
  workers_[w].restart_at = now + std::uniform_int_distribution<int64_t>(1500, 3000)(rng_);
  size_t measured = 0;
  for (const InstanceRef& ref : InstancesOfWorker(w, o_.services, o_.instances, o_.workers)) {
    InstanceState& st = instances_[ref.service * o_.instances + ref.index];
    st.killed_at = now;
    st.measuring = measured++ < kMaxLeaveMeasuresPerKill;
  }
  report_.kills++;
  report_.worker_kills++;
  return true;
}

void Demo::KillLeader(int64_t now) {
  auto leader = registry_->LeaderRaftAddress();
  if (!leader.ok() || leader->empty()) return;
  for (ServerState& s : servers_) {
    if (*leader != fmt::format("127.0.0.1:{}", s.raft)) continue;
    children_->Kill(s.pid);
    s.down = true;
    s.restart_at = now + 3000;
    report_.kills++;
    report_.leader_kills++;
    HLOG_INFO("demo_leader_killed", "raft={}", *leader);
  }
}

void Demo::KillSomething(int64_t now) {
  const bool worker = std::uniform_real_distribution<double>(0, 1)(rng_) < 0.2;
  if (worker && KillWorker(now)) return;
  KillInstance(now);
}

void Demo::RestartDue(int64_t now) {
  for (size_t i = 0; i < servers_.size(); ++i) {
    ServerState& s = servers_[i];
    if (!s.down || now < s.restart_at) continue;
    auto pid = children_->Spawn(fmt::format("server-{}", i + 1), ServerArgs(static_cast<int>(i)),
                                Log(fmt::format("server-{}", i + 1)));
    if (!pid.ok()) {
      s.restart_at = now + 1000;
      continue;
    }
    s.pid = *pid;
    s.down = false;
    report_.restarts++;
  }
  for (int w = 0; w < o_.workers; ++w) {
    WorkerState& ws = workers_[w];
    if (ws.down && !ws.starting && now >= ws.restart_at) {
      if (!StartWorker(w).ok()) ws.restart_at = now + 1000;
    }
    if (ws.starting && PollWorkerReady(w)) {
      report_.restarts++;
      for (const InstanceRef& ref : InstancesOfWorker(w, o_.services, o_.instances, o_.workers)) {
        instances_[ref.service * o_.instances + ref.index].down = false;
      }
    }
  }
  for (int idx = 0; idx < static_cast<int>(instances_.size()); ++idx) {
    InstanceState& st = instances_[idx];
    const InstanceRef ref{idx / o_.instances, idx % o_.instances};
    WorkerState& ws = workers_[WorkerOf(ref, o_.workers)];
    if (!st.down || now < st.restart_at || ws.down || ws.starting || !ws.control) continue;
    auto r = ws.control->Request("POST", "/start/" + InstanceId(ref));
    if (r.ok() && r->status == 200) {
      st.down = false;
      report_.restarts++;
    } else {
      st.restart_at = now + 500;
    }
  }
}

void Demo::MeasureLeaves(int64_t now) {
  if (now < next_measure_at_) return;
  next_measure_at_ = now + kLeaveMeasurePollMs;
  std::map<int, std::vector<int>> by_service;
  for (int idx = 0; idx < static_cast<int>(instances_.size()); ++idx) {
    InstanceState& st = instances_[idx];
    if (!st.measuring) continue;
    if (InstanceUp(idx)) {
      st.measuring = false;  // back before it was seen to leave: no sample
      continue;
    }
    by_service[idx / o_.instances].push_back(idx);
  }
  for (const auto& [s, idxs] : by_service) {
    auto passing = registry_->Passing(ServiceName(s));
    if (!passing.ok()) continue;
    for (int idx : idxs) {
      if (passing->count(InstanceId({idx / o_.instances, idx % o_.instances}))) continue;
      InstanceState& st = instances_[idx];
      const double ms = static_cast<double>(now - st.killed_at);
      st.measuring = false;
      leave_sum_ms_ += ms;
      report_.kill_to_leave_samples++;
      report_.kill_to_leave_max_ms = std::max(report_.kill_to_leave_max_ms, ms);
    }
  }
}

void Demo::ChaosTick(int64_t now) {
  if (o_.chaos && now >= next_kill_at_) {
    // Evenly spaced with jitter (not Poisson): a short run gets the kills its rate promises.
    const double mean_ms = 1000.0 / o_.kill_rate;
    next_kill_at_ = now + static_cast<int64_t>(
                              std::uniform_real_distribution<double>(0.5, 1.5)(rng_) * mean_ms);
    KillSomething(now);
  }
  if (o_.chaos_leader && now >= next_leader_kill_at_) {
    bool all_servers = true;
    for (const ServerState& s : servers_) all_servers = all_servers && !s.down;
    if (all_servers) {
      KillLeader(now);
      next_leader_kill_at_ = now + kLeaderKillEveryMs;
    }
  }
  RestartDue(now);
  MeasureLeaves(now);
}

void Demo::SampleRss() { peak_rss_kb_ = std::max(peak_rss_kb_, children_->TotalRssKb()); }

void Demo::Progress(int64_t elapsed_ms, bool final_line) {
  const int64_t since = elapsed_ms - last_progress_ms_;
  if (!final_line && since < (tty_ ? 1000 : 5000)) return;
  auto counts = load_->latency().Snapshot();
  const double p99 =
      LatencyHistogram::QuantileMs(LatencyHistogram::Minus(counts, last_counts_), 0.99);
  const uint64_t requests = load_->requests();
  const double rate = since > 0 ? (requests - last_requests_) * 1000.0 / since : 0;
  std::string line = fmt::format(
      "[{:>4}/{} s] {:>6.0f} req/s | {} failures | p99 {:.1f} ms | instances {}/{} up | kills {} "
      "restarts {} | {} MiB",
      elapsed_ms / 1000, o_.duration_s, rate, load_->failures(), p99, UpInstances(),
      instances_.size(), report_.kills, report_.restarts, peak_rss_kb_ / 1024);
  if (tty_) {
    std::cout << "\r" << line << "\x1b[K" << (final_line ? "\n" : "") << std::flush;
  } else {
    std::cout << line << std::endl;
  }
  last_counts_ = counts;
  last_requests_ = requests;
  last_progress_ms_ = elapsed_ms;
}

void Demo::RunLoad() {
  LoadOptions lo;
  lo.proxy = fmt::format("127.0.0.1:{}", proxy_port_);
  lo.services = o_.services;
  lo.concurrency = o_.concurrency;
  lo.write_fraction = o_.write_fraction;
  lo.seed = o_.seed;
  load_ = std::make_unique<LoadGenerator>(lo);
  tty_ = isatty(STDOUT_FILENO) != 0;
  const int64_t start = NowMs();
  next_kill_at_ = start + 1000;  // the first second runs without chaos, as a baseline
  next_leader_kill_at_ = start + 3000;
  load_->Start();
  int64_t now = start;
  while (!g_interrupted && now - start < o_.duration_s * 1000) {
    ChaosTick(now);
    SampleRss();
    Progress(now - start, false);
    for (const std::string& role : children_->ReapExited()) Note(role + " exited by itself");
    Tick();
    now = NowMs();
  }
  load_->Stop();
  report_.duration_s = static_cast<double>(NowMs() - start) / 1000.0;
  Progress(NowMs() - start, true);
}

// Brings every killed piece back, then waits for each confirmed event to be recorded.
Status Demo::Drain() {
  for (InstanceState& st : instances_) st.restart_at = 0;
  for (WorkerState& ws : workers_) ws.restart_at = 0;
  for (ServerState& s : servers_) s.restart_at = 0;
  const bool all_up = WaitUntil(
      [&] {
        RestartDue(NowMs());
        SampleRss();
        return AllUp();
      },
      kStartDeadlineMs);
  if (!all_up) Note("not every instance came back before the drain");
  const std::vector<AckedWrite> acked = load_->acked();
  report_.acked_writes = acked.size();
  Result<DataCheck> check = Status::Unavailable("not checked");
  const bool drained = WaitUntil(
      [&] {
        check = CheckData(o_.work_dir, o_.services, acked);
        return check.ok() && check->events_lost == 0;
      },
      o_.drain_timeout_s * 1000);
  if (!check.ok()) return check.status();
  if (!drained) {
    Note(fmt::format("events still unrecorded after the {} s drain", o_.drain_timeout_s));
    NoteBusyQueues();
  }
  report_.lost_writes = check->lost_writes;
  report_.events_published = check->events_published;
  report_.events_consumed = check->events_consumed;
  report_.events_lost = check->events_lost;
  return Status::Ok();
}

// Where undelivered events sit, for the report: queues still holding messages after the drain.
void Demo::NoteBusyQueues() {
  auto r = registry_->Request("GET", "/v1/mq/queues");
  if (!r.ok() || r->status != 200) return;
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(r->body, ec);
  if (ec || !v.is_array()) return;
  for (const boost::json::value& q : v.get_array()) {
    const boost::json::object* o = q.if_object();
    if (!o) continue;
    auto num = [&](const char* k) {
      const boost::json::value* x = o->if_contains(k);
      return x && x->is_number() ? x->to_number<double>() : 0.0;
    };
    if (num("messages_ready") + num("messages_unacknowledged") == 0) continue;
    const boost::json::value* name = o->if_contains("name");
    Note(fmt::format("queue {}: {} ready, {} unacked, {} consumers",
                     name ? boost::json::serialize(*name) : "?", num("messages_ready"),
                     num("messages_unacknowledged"), num("consumers")));
  }
}

void Demo::ReadProxyMetrics() {
  net::HttpClient admin(fmt::format("http://127.0.0.1:{}", admin_port_), 5000);
  auto r = admin.Request("GET", "/metrics");
  if (!r.ok() || r->status != 200) {
    Note("could not read the proxy's metrics");
    return;
  }
  report_.failovers = static_cast<uint64_t>(SumMetric(r->body, "haven_proxy_failovers_total"));
  report_.retries = static_cast<uint64_t>(SumMetric(r->body, "haven_proxy_retries_total"));
}

void Demo::Shutdown(bool fast) {
  if (!children_) return;
  std::vector<pid_t> workers;
  for (const WorkerState& w : workers_) {
    if (w.pid > 0 && children_->running(w.pid)) workers.push_back(w.pid);
  }
  // Workers first, while the registry is up: they deregister their instances on SIGTERM.
  if (!workers.empty()) children_->Terminate(workers, fast ? 3000 : 20000);
  children_->KillAll(fast ? 3000 : 10000);
}

int Demo::Run() {
  if (Status s = Prepare(); !s.ok()) {
    std::cerr << "haven demo: " << s.message() << "\n";
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::cout << fmt::format("haven demo: work dir {} (seed {})", o_.work_dir, o_.seed) << std::endl;
  workers_.resize(o_.workers);
  const int64_t t0 = NowMs();
  Status started = StartServers();
  if (started.ok()) started = StartProxy();
  for (int w = 0; started.ok() && w < o_.workers; ++w) started = StartWorker(w);
  if (started.ok()) {
    const bool ready = WaitUntil(
        [&] {
          bool all = true;
          for (int w = 0; w < o_.workers; ++w) all = PollWorkerReady(w) && all;
          for (const std::string& role : children_->ReapExited()) Note(role + " exited by itself");
          SampleRss();
          return all;
        },
        kStartDeadlineMs);
    if (!ready)
      started = Status::Unavailable("workers did not start (logs in " + o_.work_dir + "/logs)");
  }
  if (started.ok()) started = WarmUp();
  if (!started.ok() || g_interrupted) {
    if (!g_interrupted) std::cerr << "haven demo: " << started.message() << "\n";
    Shutdown(true);
    if (!o_.keep && !g_interrupted)
      std::cerr << "haven demo: work dir kept for inspection: " << o_.work_dir << "\n";
    return g_interrupted ? 130 : 2;
  }
  std::cout << fmt::format(
                   "haven demo: {} servers, proxy on 127.0.0.1:{}, {} instances in {} workers up "
                   "in {:.1f} s; load for {} s",
                   o_.cluster, proxy_port_, instances_.size(), o_.workers, (NowMs() - t0) / 1000.0,
                   o_.duration_s)
            << std::endl;
  std::ofstream(o_.work_dir + "/state") << "running\n";
  RunLoad();
  if (g_interrupted) {
    std::cout << "haven demo: interrupted, stopping every process" << std::endl;
    Shutdown(true);
    if (!o_.keep) fs::remove_all(o_.work_dir);
    return 130;
  }
  Status drained = Drain();
  if (!drained.ok()) Note("data check failed: " + drained.ToString());
  ReadProxyMetrics();
  SampleRss();
  Shutdown(g_interrupted != 0);

  const auto counts = load_->latency().Snapshot();
  report_.services = o_.services;
  report_.instances = o_.instances;
  report_.cluster = o_.cluster;
  report_.requests = load_->requests();
  report_.failures = load_->failures();
  report_.successes = report_.requests - report_.failures;
  report_.reads = load_->reads();
  report_.writes = load_->writes();
  report_.p50_ms = LatencyHistogram::QuantileMs(counts, 0.5);
  report_.p99_ms = LatencyHistogram::QuantileMs(counts, 0.99);
  report_.p999_ms = LatencyHistogram::QuantileMs(counts, 0.999);
  report_.failure_samples = load_->failure_samples();
  report_.peak_rss_mb = static_cast<double>(peak_rss_kb_) / 1024.0;
  if (report_.kill_to_leave_samples > 0) {
    report_.kill_to_leave_avg_ms =
        leave_sum_ms_ / static_cast<double>(report_.kill_to_leave_samples);
  }
  std::cout << report_.ToText();
  if (!o_.json.empty()) {
    std::ofstream f(o_.json, std::ios::trunc);
    f << report_.ToJson();
    if (!f.good()) std::cerr << "haven demo: cannot write " << o_.json << "\n";
  }
  if (o_.keep) {
    std::cout << "haven demo: work dir kept: " << o_.work_dir << "\n";
  } else {
    fs::remove_all(o_.work_dir);
  }
  return drained.ok() && report_.Passed() ? 0 : 1;
}

}  // namespace

Status ValidateDemoOptions(const DemoOptions& o) {
  auto bad = [](std::string m) { return Status::InvalidArgument(std::move(m)); };
  if (o.services < 1 || o.services > kMaxServices) return bad("--services must be 1..999");
  if (o.instances < 1 || o.instances > kMaxInstances) return bad("--instances must be 1..9");
  if (o.workers < 1 || o.workers > 64) return bad("--workers must be 1..64");
  if (o.cluster != 1 && o.cluster != 3) return bad("--cluster must be 1 or 3");
  if (o.duration_s < 1 || o.duration_s > 24 * 3600) return bad("--duration must be 1s..24h");
  if (o.concurrency < 1 || o.concurrency > 1024) return bad("--concurrency must be 1..1024");
  if (o.write_fraction < 0 || o.write_fraction > 1) return bad("--write-fraction must be 0..1");
  if (o.kill_rate <= 0 || o.kill_rate > 100)
    return bad("--kill-rate must be above 0, at most 100 per second");
  if (o.chaos && o.instances < 2) {
    return bad(
        "--chaos needs --instances of 2 or more: a service needs another instance to fail over to "
        "(or give --no-chaos)");
  }
  if (o.chaos_leader && o.cluster != 3) return bad("--chaos-leader needs --cluster 3");
  if (o.drain_timeout_s < 1 || o.drain_timeout_s > 3600)
    return bad("--drain-timeout must be 1s..1h");
  if (o.ttl_ms < 1000 || o.ttl_ms > 600000) return bad("--ttl must be 1s..10m");
  if (o.check_interval_ms < 100 || o.check_interval_ms > 60000)
    return bad("--check-interval must be 100ms..1m");
  return Status::Ok();
}

int RunDemo(DemoOptions options) {
  if (Status s = ValidateDemoOptions(options); !s.ok()) {
    std::cerr << "haven demo: " << s.message() << "\n";
    return 2;
  }
  if (options.seed == 0) options.seed = static_cast<uint64_t>(NowMs());
  Demo demo(std::move(options));
  return demo.Run();
}

}  // namespace haven::demo
