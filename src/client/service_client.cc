#include "client/service_client.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "base/log.h"
#include "client/watch.h"
#include "net/http_client.h"

namespace haven::client {
namespace {

constexpr size_t kMaxServices = 1000;  // watcher threads one client may start
constexpr size_t kMaxServiceNameBytes = 256;
constexpr size_t kMaxIdlePerEndpoint = 64;  // idle keep-alive connections kept per instance
constexpr size_t kMaxPooledEndpoints = 10'000;
constexpr size_t kMaxRequestHeaders = 100;
constexpr size_t kMaxRequestBodyBytes = 64 << 20;
constexpr int64_t kStopWaitMs = 500;  // how long the destructor waits for all watchers together

MonoMs NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Status ValidateServiceName(const std::string& name) {
  if (name.empty() || name.size() > kMaxServiceNameBytes) {
    return Status::InvalidArgument("service name must be 1.." +
                                   std::to_string(kMaxServiceNameBytes) + " bytes");
  }
  for (char c : name) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    if (!ok) return Status::InvalidArgument("bad character in service name \"" + name + "\"");
  }
  return Status::Ok();
}

Status ValidateRequest(const Request& req) {
  if (req.method.empty() || req.method.size() > 32) return Status::InvalidArgument("bad method");
  if (req.target.empty() || req.target.front() != '/') {
    return Status::InvalidArgument("target must start with '/'");
  }
  if (req.headers.size() > kMaxRequestHeaders) {
    return Status::InvalidArgument("more than " + std::to_string(kMaxRequestHeaders) + " headers");
  }
  if (req.body.size() > kMaxRequestBodyBytes) return Status::TooLarge("request body over 64 MiB");
  return Status::Ok();
}

std::string BaseUrl(const lb::Endpoint& ep) {
  bool v6 = ep.host.find(':') != std::string::npos;
  return "http://" + (v6 ? "[" + ep.host + "]" : ep.host) + ":" + std::to_string(ep.port);
}

// How a transport error maps onto the retry policy's vocabulary. HttpClient names the step that
// failed: nothing reached the instance when resolve or connect failed.
lb::AttemptResult ClassifyError(const Status& s) {
  const std::string& m = s.message();
  bool before_send = m.rfind("connect ", 0) == 0 || m.rfind("resolve ", 0) == 0;
  if (before_send) return {lb::AttemptFailure::kConnectFailed, false, 0};
  if (m.find("timed out") != std::string::npos) return {lb::AttemptFailure::kTimeout, true, 0};
  return {lb::AttemptFailure::kClosedBeforeResponse, true, 0};
}

// What an attempt says about its instance. Refused, or reset/closed before any answer (HttpClient
// already retried a reused connection once on a fresh one), is definite: the instance is dead.
lb::Outcome OutcomeOf(const Result<net::HttpClientResult>& r) {
  if (r.ok()) return r->status >= 500 ? lb::Outcome::kFailure : lb::Outcome::kSuccess;
  const std::string& m = r.status().message();
  if (m.find("timed out") != std::string::npos) return lb::Outcome::kTimeout;
  if (m.find("refused") != std::string::npos || m.find("reset") != std::string::npos ||
      m.find("end of stream") != std::string::npos) {
    return lb::Outcome::kConnectFailure;
  }
  return lb::Outcome::kFailure;
}

lb::TryTimeoutOptions AdaptiveOptions(const ClientOptions& o) {
  lb::TryTimeoutOptions t = o.try_timeout;
  t.ceiling_ms = o.retry.per_try_timeout_ms;
  return t;
}

// One HttpClient and whether it may go back to the pool (only clients with the normal timeout).
struct Conn {
  std::unique_ptr<net::HttpClient> http;
  bool poolable = false;
};

// The outcome of one attempt: a response or a transport error.
struct Attempt {
  Result<net::HttpClientResult> result = Status::Internal("not run");
  MonoMs started = 0;
};

}  // namespace

// Per-service picking state. `mu` guards everything but `watch` (which has its own lock).
struct ServiceState {
  ServiceState(std::shared_ptr<WatchState> w, const ClientOptions& o, uint64_t seed)
      : watch(std::move(w)),
        balancer(lb::MakeBalancer(o.policy, seed)),
        outlier(o.outlier),
        retry(o.retry, seed ^ 0x9e3779b97f4a7c15ULL),
        try_timeout(AdaptiveOptions(o)) {}

  std::shared_ptr<WatchState> watch;
  std::thread thread;
  std::mutex mu;
  std::unique_ptr<lb::Balancer> balancer;
  lb::OutlierDetector outlier;
  lb::RetryPolicy retry;
  lb::TryTimeout try_timeout;
  uint64_t applied_version = 0;
  uint64_t panic_picks = 0;  // first tries sent to an ejected instance because none other was left
};

struct ServiceClient::Impl {
  explicit Impl(ClientOptions o)
      : opts(std::move(o)), registry_urls(ParseRegistryUrls(opts.registry)) {}

  Result<ServiceState*> Service(const std::string& name);
  std::optional<lb::Endpoint> Pick(ServiceState& st, const std::unordered_set<std::string>& tried);
  void Report(ServiceState& st, const std::string& id, MonoMs started, lb::Outcome outcome);
  int64_t TryTimeoutMs(ServiceState& st, bool retryable, int attempt);
  Attempt Send(const lb::Endpoint& ep, const Request& req, int64_t timeout_ms);
  Conn TakeConn(const lb::Endpoint& ep, int64_t timeout_ms);
  void ReturnConn(const lb::Endpoint& ep, int64_t timeout_ms, Conn conn);
  void StopWatchers();
  void StartProber();
  void StopProber();
  void ProbeLoop();
  void ProbeEjected(ServiceState& st);

  ClientOptions opts;
  Result<std::vector<std::string>> registry_urls;  // opts.registry parsed; its error otherwise
  std::atomic<uint64_t> seed{std::random_device{}()};
  std::mutex services_mu;
  std::unordered_map<std::string, std::unique_ptr<ServiceState>> services;
  std::mutex pool_mu;
  // Keyed by base URL and timeout (an HttpClient's timeout is fixed); the adaptive timeout takes
  // few distinct values (bucket bounds x multiplier), so the keys stay few.
  std::unordered_map<std::string, std::vector<std::unique_ptr<net::HttpClient>>> pool;
  std::mutex probe_mu;
  std::condition_variable probe_cv;
  bool probe_stop = false;
  std::thread prober;
};

namespace {

// Installs the watcher's latest list in the balancer and outlier detector. Caller holds st.mu.
void SyncEndpoints(ServiceState& st) {
  std::vector<lb::Endpoint> eps;
  if (!st.watch->CopyIfNewer(&st.applied_version, &eps)) return;
  st.outlier.SetEndpoints(eps);
  st.balancer->SetEndpoints(std::move(eps));
}

std::optional<size_t> IndexOf(const lb::Balancer& b, const std::string& id) {
  const auto& eps = b.endpoints();
  for (size_t i = 0; i < eps.size(); ++i) {
    if (eps[i].id == id) return i;
  }
  return std::nullopt;
}

}  // namespace

Result<ServiceState*> ServiceClient::Impl::Service(const std::string& name) {
  if (Status s = ValidateServiceName(name); !s.ok()) return s;
  ServiceState* st = nullptr;
  {
    std::lock_guard lock(services_mu);
    auto it = services.find(name);
    if (it != services.end()) {
      st = it->second.get();
    } else {
      if (services.size() >= kMaxServices) {
        return Status::Unavailable("more than " + std::to_string(kMaxServices) +
                                   " services watched by one client");
      }
      if (!registry_urls.ok()) return registry_urls.status();
      auto watch = std::make_shared<WatchState>(*registry_urls, name, opts.watch_wait_ms);
      auto state = std::make_unique<ServiceState>(watch, opts, seed.fetch_add(1));
      state->thread = StartWatch(watch);
      st = state.get();
      services.emplace(name, std::move(state));
    }
  }
  auto first = st->watch->AwaitFirst(opts.retry.per_try_timeout_ms);
  if (!first.ok()) return first.status();
  return st;
}

std::optional<lb::Endpoint> ServiceClient::Impl::Pick(
    ServiceState& st, const std::unordered_set<std::string>& tried) {
  std::lock_guard lock(st.mu);
  SyncEndpoints(st);
  MonoMs now = NowMs();
  const auto& eps = st.balancer->endpoints();
  lb::PickContext ctx;
  ctx.now = now;
  // Prefer an instance not tried yet for this request; fall back to any that is not ejected.
  ctx.eligible = [&](size_t i) {
    return !tried.count(eps[i].id) && !st.outlier.IsEjected(eps[i].id, now);
  };
  std::optional<size_t> idx = st.balancer->Pick(ctx);
  if (!idx) {
    ctx.eligible = [&](size_t i) { return !st.outlier.IsEjected(eps[i].id, now); };
    idx = st.balancer->Pick(ctx);
  }
  if (!idx && tried.empty()) {
    // Panic, as the proxy does (docs/proxy.md): every instance is ejected. A call's first try goes
    // to one of them anyway rather than failing unasked: an ejection may be stale (the instance
    // restarted between two probes), and a dead instance refuses at once.
    ctx.eligible = [](size_t) { return true; };
    idx = st.balancer->Pick(ctx);
    if (idx) ++st.panic_picks;
  }
  if (!idx) return std::nullopt;
  st.balancer->OnStart(*idx, now);
  return eps[*idx];
}

void ServiceClient::Impl::Report(ServiceState& st, const std::string& id, MonoMs started,
                                 lb::Outcome outcome) {
  std::lock_guard lock(st.mu);
  MonoMs now = NowMs();
  const bool failed = outcome != lb::Outcome::kSuccess;
  if (auto idx = IndexOf(*st.balancer, id)) {
    st.balancer->OnFinish(*idx, now, (now - started) * 1000, failed);
  }
  if (!failed) st.try_timeout.OnSuccess(now, (now - started) * 1000);
  lb::EjectionReason why = st.outlier.OnOutcome(id, outcome, now);
  if (why != lb::EjectionReason::kNone) {
    HLOG_WARN("client_ejected", "service={} endpoint={} reason={}", st.watch->service(), id,
              lb::EjectionReasonName(why));
  }
}

// Adaptive only while a timeout could be retried: a non-retryable request (it cannot be retried
// once sent), the last attempt and a spent retry budget get the configured per-try timeout, so
// that a slow but healthy answer still arrives.
int64_t ServiceClient::Impl::TryTimeoutMs(ServiceState& st, bool retryable, int attempt) {
  if (!retryable || attempt >= opts.retry.max_attempts) return opts.retry.per_try_timeout_ms;
  std::lock_guard lock(st.mu);
  MonoMs now = NowMs();
  if (st.retry.budget_remaining(now) <= 0) return opts.retry.per_try_timeout_ms;
  return st.try_timeout.TimeoutMs(now);
}

namespace {
std::string PoolKey(const lb::Endpoint& ep, int64_t timeout_ms) {
  return BaseUrl(ep) + "#" + std::to_string(timeout_ms);
}
}  // namespace

Conn ServiceClient::Impl::TakeConn(const lb::Endpoint& ep, int64_t timeout_ms) {
  {
    std::lock_guard lock(pool_mu);
    auto it = pool.find(PoolKey(ep, timeout_ms));
    if (it != pool.end() && !it->second.empty()) {
      Conn c{std::move(it->second.back()), true};
      it->second.pop_back();
      return c;
    }
  }
  return {std::make_unique<net::HttpClient>(BaseUrl(ep), timeout_ms), true};
}

void ServiceClient::Impl::ReturnConn(const lb::Endpoint& ep, int64_t timeout_ms, Conn conn) {
  if (!conn.poolable) return;
  std::lock_guard lock(pool_mu);
  auto key = PoolKey(ep, timeout_ms);
  if (pool.size() >= kMaxPooledEndpoints && !pool.count(key)) return;
  auto& idle = pool[key];
  if (idle.size() < kMaxIdlePerEndpoint) idle.push_back(std::move(conn.http));
}

Attempt ServiceClient::Impl::Send(const lb::Endpoint& ep, const Request& req, int64_t timeout_ms) {
  Attempt a;
  a.started = NowMs();
  Conn conn = TakeConn(ep, timeout_ms);
  a.result = conn.http->Request(req.method, req.target, req.body, req.headers);
  // A client that failed may hold a half-used connection: drop it rather than pool it.
  if (a.result.ok()) ReturnConn(ep, timeout_ms, std::move(conn));
  return a;
}

void ServiceClient::Impl::StartProber() {
  if (opts.probe_interval_ms <= 0) return;
  prober = std::thread([this] { ProbeLoop(); });
}

void ServiceClient::Impl::StopProber() {
  {
    std::lock_guard lock(probe_mu);
    probe_stop = true;
  }
  probe_cv.notify_all();
  if (prober.joinable()) prober.join();  // a probe in flight ends within probe_timeout_ms
}

void ServiceClient::Impl::ProbeLoop() {
  std::unique_lock lock(probe_mu);
  while (!probe_cv.wait_for(lock, std::chrono::milliseconds(opts.probe_interval_ms),
                            [this] { return probe_stop; })) {
    lock.unlock();
    std::vector<ServiceState*> states;
    {
      std::lock_guard services_lock(services_mu);
      for (auto& [name, st] : services) states.push_back(st.get());  // never removed
    }
    for (ServiceState* st : states) ProbeEjected(*st);
    lock.lock();
  }
}

// Probes, one after the other, the instances ejected for connect errors or timeouts; one that
// answers anything is forgiven: back in rotation at once.
void ServiceClient::Impl::ProbeEjected(ServiceState& st) {
  std::vector<lb::Endpoint> wanted;
  {
    std::lock_guard lock(st.mu);
    MonoMs now = NowMs();
    for (const auto& ep : st.balancer->endpoints()) {
      if (st.outlier.WantsProbe(ep.id, now)) wanted.push_back(ep);
    }
  }
  for (const auto& ep : wanted) {
    net::HttpClient probe(BaseUrl(ep), opts.probe_timeout_ms);
    if (!probe.Request("GET", opts.probe_path).ok()) continue;
    std::lock_guard lock(st.mu);
    st.outlier.Forgive(ep.id, NowMs());
    HLOG_INFO("client_probe_readmitted", "service={} endpoint={}", st.watch->service(), ep.id);
  }
}

void ServiceClient::Impl::StopWatchers() {
  std::lock_guard lock(services_mu);
  for (auto& [name, st] : services) st->watch->RequestStop();
  MonoMs deadline = NowMs() + kStopWaitMs;
  for (auto& [name, st] : services) {
    if (!st->thread.joinable()) continue;
    // A blocking query in flight cannot be interrupted: such a thread is left to finish alone; it
    // only holds its WatchState.
    if (st->watch->AwaitDone(std::max<int64_t>(0, deadline - NowMs()))) {
      st->thread.join();
    } else {
      st->thread.detach();
    }
  }
}

ServiceClient::ServiceClient(ClientOptions opts) : impl_(std::make_unique<Impl>(std::move(opts))) {
  auto& o = impl_->opts;
  o.watch_wait_ms = std::clamp<int64_t>(o.watch_wait_ms, 1'000, 600'000);
  // Out-of-range values are clamped exactly as the lb core clamps them, so the timeouts used here
  // (pool, first discovery wait) agree with the policy's.
  o.retry = lb::RetryPolicy(o.retry, 0).options();
  o.outlier = lb::OutlierDetector(o.outlier).options();
  o.try_timeout = lb::TryTimeout(AdaptiveOptions(o)).options();
  o.probe_interval_ms = std::clamp<int64_t>(o.probe_interval_ms, 0, 3'600'000);
  o.probe_timeout_ms = std::clamp<int64_t>(o.probe_timeout_ms, 1, 3'600'000);
  if (o.probe_path.empty() || o.probe_path.front() != '/') o.probe_path = "/";
  impl_->StartProber();
}

ServiceClient::~ServiceClient() {
  impl_->StopProber();
  impl_->StopWatchers();
}

std::vector<std::string> ServiceClient::EjectedInstances(const std::string& service) {
  ServiceState* st = nullptr;
  {
    std::lock_guard lock(impl_->services_mu);
    auto it = impl_->services.find(service);
    if (it == impl_->services.end()) return {};
    st = it->second.get();
  }
  std::lock_guard lock(st->mu);
  std::vector<std::string> out;
  MonoMs now = NowMs();
  for (const auto& ep : st->balancer->endpoints()) {
    if (st->outlier.IsEjected(ep.id, now)) out.push_back(ep.id);
  }
  return out;
}

uint64_t ServiceClient::PanicPicks(const std::string& service) {
  ServiceState* st = nullptr;
  {
    std::lock_guard lock(impl_->services_mu);
    auto it = impl_->services.find(service);
    if (it == impl_->services.end()) return 0;
    st = it->second.get();
  }
  std::lock_guard lock(st->mu);
  return st->panic_picks;
}

Result<std::vector<lb::Endpoint>> ServiceClient::Instances(const std::string& service) {
  auto st = impl_->Service(service);
  if (!st.ok()) return st.status();
  std::vector<lb::Endpoint> eps;
  uint64_t version = 0;
  (*st)->watch->CopyIfNewer(&version, &eps);
  return eps;
}

Result<Response> ServiceClient::Call(const std::string& service, const Request& req) {
  if (Status s = ValidateRequest(req); !s.ok()) return s;
  auto found = impl_->Service(service);
  if (!found.ok()) return found.status();
  ServiceState& st = **found;
  const auto& ro = impl_->opts.retry;
  lb::RequestTraits traits{lb::IsIdempotentMethod(req.method) || req.retryable, true};
  MonoMs deadline = NowMs() + ro.overall_timeout_ms;
  {
    std::lock_guard lock(st.mu);
    st.retry.OnRequest(NowMs());
  }
  std::unordered_set<std::string> tried;
  Status last_error;
  int dead_tries = 0;  // tries that found their instance dead: not counted as attempts
  for (int tries = 1;; ++tries) {
    const int attempt = tries - dead_tries;
    std::optional<lb::Endpoint> ep = impl_->Pick(st, tried);
    if (!ep) {
      std::string msg = "no healthy instance for service " + service;
      if (!last_error.ok()) msg += " (last error: " + last_error.message() + ")";
      return Status::Unavailable(msg);
    }
    tried.insert(ep->id);
    int64_t remaining = deadline - NowMs();
    int64_t try_ms = impl_->TryTimeoutMs(st, traits.idempotent, attempt);
    Attempt a = impl_->Send(*ep, req, std::clamp<int64_t>(remaining, 1, try_ms));
    const lb::Outcome outcome = OutcomeOf(a.result);
    impl_->Report(st, ep->id, a.started, outcome);
    if (outcome == lb::Outcome::kTimeout) {
      HLOG_INFO("client_try_timeout", "service={} endpoint={} attempt={} timeout_ms={} took_ms={}",
                service, ep->id, attempt, try_ms, NowMs() - a.started);
    }
    if (a.result.ok() && a.result->status < 500) {
      return Response{a.result->status, std::move(a.result->body), ep->id, tries};
    }
    lb::AttemptResult ar =
        a.result.ok() ? lb::AttemptResult{lb::AttemptFailure::kStatus, true, a.result->status}
                      : ClassifyError(a.result.status());
    if (outcome == lb::Outcome::kConnectFailure) {
      ar.instance_dead = true;
      ar.dead_tries = ++dead_tries;
    }
    lb::RetryDecision d;
    {
      std::lock_guard lock(st.mu);
      d = st.retry.Decide(traits, ar, attempt, NowMs(), deadline);
    }
    if (!d.retry) {
      if (a.result.ok()) {
        return Response{a.result->status, std::move(a.result->body), ep->id, tries};
      }
      return Status::Unavailable("service " + service + ": " + std::to_string(tries) +
                                 " attempt(s) failed, last on " + ep->id + ": " +
                                 a.result.status().message());
    }
    HLOG_DEBUG("client_retry", "service={} endpoint={} attempt={} reason=\"{}\"", service, ep->id,
               attempt, d.reason);
    last_error = a.result.ok() ? Status::Unavailable("status " + std::to_string(a.result->status))
                               : a.result.status();
    if (d.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(d.delay_ms));
  }
}

}  // namespace haven::client
