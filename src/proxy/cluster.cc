#include "proxy/cluster.h"

#include <poll.h>

#include <algorithm>
#include <array>
#include <chrono>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>

#include "base/log.h"

namespace haven::proxy {

MonoMs NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

namespace {

// A connection idle for less than this cannot have hit an upstream keep-alive timeout yet: it is
// reused without the liveness poll (one syscall per request saved). A rare close in that window is
// still caught: the attempt retries on a fresh connection before any byte was answered.
constexpr auto kTrustIdleFor = std::chrono::milliseconds(500);

// True when an idle pooled connection was closed by the peer (or sent something unasked).
bool IdleConnectionDead(Socket& s) {
  pollfd p{};
  p.fd = s.native_handle();
  p.events = POLLIN | POLLRDHUP;
  return ::poll(&p, 1, 0) != 0;
}

lb::TryTimeoutOptions AdaptiveOptions(const ClusterOptions& opts) {
  lb::TryTimeoutOptions o = opts.try_timeout;
  o.ceiling_ms = opts.retry.per_try_timeout_ms;
  return o;
}

}  // namespace

Cluster::Cluster(const ClusterOptions& opts, ClusterMetrics& metrics, const Executor& ex,
                 uint64_t seed)
    : opts_(opts),
      m_(metrics),
      ex_(ex),
      balancer_(lb::MakeBalancer(opts.policy, 0x9e3779b97f4a7c15ULL + seed)),
      outlier_(opts.outlier),
      retry_(opts.retry, 0x2545f4914f6cdd1dULL + seed),
      breaker_(opts.circuit),
      try_timeout_(AdaptiveOptions(opts)),
      list_(std::make_shared<const std::vector<lb::Endpoint>>()) {}

Cluster::~Cluster() { slots_.clear(); }  // while breaker_ still counts their closes

void Cluster::SetEndpoints(const EndpointSnapshot& snap) {
  if (snap->empty() && !list_->empty()) {
    // The registry lists no passing instance any more (say the last one's check timed out under
    // load): the last ones stay, for panic picks only, rather than none at all. A dead one
    // refuses at once, so the answer is the same fast 503 when they are truly gone.
    if (!last_resort_) {
      HLOG_INFO("proxy_last_resort", "cluster={} kept={}", m_.name, list_->size());
    }
    last_resort_ = true;
    return;
  }
  last_resort_ = false;
  balancer_->SetEndpoints(*snap);
  outlier_.SetEndpoints(*snap);
  auto list = std::make_shared<const std::vector<lb::Endpoint>>(balancer_->endpoints());
  std::vector<Slot> slots(list->size());
  std::unordered_map<std::string, size_t> index_of;
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string& id = (*list)[i].id;
    index_of[id] = i;
    if (auto old = index_of_.find(id); old != index_of_.end()) {
      slots[i].idle = std::move(slots_[old->second].idle);
    }
    auto& hist = latency_by_id_[id];
    if (hist == nullptr) hist = m_.InstanceLatency(id);
    slots[i].latency = hist;
  }
  list_ = std::move(list);
  slots_ = std::move(slots);  // idle connections of instances gone close here
  index_of_ = std::move(index_of);
}

void Cluster::SetHealth(const std::string& id, bool healthy) {
  if (healthy) {
    unhealthy_.erase(id);
    outlier_.Forgive(id, NowMs());
    return;
  }
  unhealthy_.insert(id);
  if (auto it = index_of_.find(id); it != index_of_.end()) slots_[it->second].idle.clear();
}

void Cluster::Drain() {
  draining_ = true;
  for (Slot& s : slots_) s.idle.clear();
}

bool Cluster::Eligible(size_t i, MonoMs now, const Tried& tried, bool allow_tried,
                       bool panic) const {
  const std::string& id = (*list_)[i].id;
  if (!panic && (last_resort_ || unhealthy_.contains(id) || outlier_.IsEjected(id, now))) {
    return false;
  }
  if (breaker_.IsFull(id)) return false;
  if (slots_[i].idle.empty() && breaker_.connections(id) >= opts_.circuit.max_connections) {
    return false;
  }
  return allow_tried || std::find(tried.begin(), tried.end(), id) == tried.end();
}

std::optional<Cluster::Picked> Cluster::Pick(MonoMs now, const Tried& tried, bool allow_tried,
                                             std::optional<uint64_t> hash) {
  // One pointer captured: the std::function stays in its small buffer (no allocation per pick).
  struct Args {
    const Cluster* self;
    MonoMs now;
    const Tried* tried;
    bool allow_tried;
    bool panic;
  } args{this, now, &tried, false, false};
  lb::PickContext ctx;
  ctx.now = now;
  ctx.hash = hash;
  ctx.eligible = [a = &args](size_t i) {
    return a->self->Eligible(i, a->now, *a->tried, a->allow_tried, a->panic);
  };
  auto idx = balancer_->Pick(ctx);
  if (!idx && allow_tried) {
    args.allow_tried = true;
    idx = balancer_->Pick(ctx);
  }
  if (!idx && tried.empty()) {
    // Panic, as Envoy does: every instance is ejected or failing its checks. A request's first try
    // goes to one of them anyway rather than failing unasked: an ejection may be stale (an
    // instance restarted, a check between two probes), and a dead one refuses at once.
    args.panic = true;
    idx = balancer_->Pick(ctx);
    if (idx) metrics().panics->Inc();
  }
  if (!idx) return std::nullopt;
  balancer_->OnStart(*idx, now);
  breaker_.TryAcquire((*list_)[*idx].id);
  return Picked{list_, *idx};
}

std::optional<size_t> Cluster::CurrentIndex(const Picked& p) const {
  if (p.list == list_) return p.index;
  auto it = index_of_.find(p.endpoint().id);
  if (it == index_of_.end()) return std::nullopt;
  return it->second;
}

void Cluster::Finish(const Picked& p, MonoMs start, lb::Outcome outcome) {
  MonoMs now = NowMs();
  const lb::Endpoint& ep = p.endpoint();
  breaker_.Release(ep.id);
  const bool failed = outcome != lb::Outcome::kSuccess;
  auto idx = CurrentIndex(p);
  if (idx) {
    balancer_->OnFinish(*idx, now, (now - start) * 1000, failed);
    slots_[*idx].latency->Observe(static_cast<double>(now - start) / 1000.0);
  }
  if (!failed) try_timeout_.OnSuccess(now, (now - start) * 1000);
  if (outcome == lb::Outcome::kTimeout) m_.try_timeouts->Inc();
  lb::EjectionReason why = outlier_.OnOutcome(ep.id, outcome, now);
  if (why != lb::EjectionReason::kNone) {
    m_.ejections[static_cast<size_t>(why)]->Inc();
    if (idx) slots_[*idx].idle.clear();  // pooled connections to it are suspect
    HLOG_WARN("proxy_ejected", "cluster={} upstream={} addr={}:{} reason={}", m_.name, ep.id,
              ep.host, ep.port, lb::EjectionReasonName(why));
  }
}

int64_t Cluster::TryTimeoutMs(bool retryable, int attempt, MonoMs now) const {
  const lb::RetryOptions& r = retry_.options();
  if (!retryable || attempt >= r.max_attempts || retry_.budget_remaining(now) <= 0) {
    return r.per_try_timeout_ms;
  }
  return try_timeout_.TimeoutMs(now);
}

Task<void> Cluster::ProbeLoop() {
  if (opts_.probe_interval_ms <= 0) co_return;
  Timer timer(ex_);
  while (!draining_) {
    timer.expires_after(std::chrono::milliseconds(opts_.probe_interval_ms));
    auto [ec] = co_await timer.async_wait(kAwait);
    if (ec || draining_) co_return;
    StartProbes(NowMs());
  }
}

void Cluster::StartProbes(MonoMs now) {
  for (const lb::Endpoint& ep : *list_) {
    if (!outlier_.WantsProbe(ep.id, now) || probing_.contains(ep.id)) continue;
    probing_.insert(ep.id);
    asio::co_spawn(ex_, Probe(ep), asio::detached);
  }
}

Task<void> Cluster::Probe(lb::Endpoint ep) {
  bool answered = co_await ProbeAnswers(ep);
  probing_.erase(ep.id);
  (answered ? m_.probe_pass : m_.probe_fail)->Inc();
  MonoMs now = NowMs();
  if (!answered || !outlier_.IsEjected(ep.id, now)) co_return;
  outlier_.Forgive(ep.id, now);
  HLOG_INFO("proxy_probe_readmitted", "cluster={} upstream={} addr={}:{}", m_.name, ep.id, ep.host,
            ep.port);
}

Task<bool> Cluster::ProbeAnswers(const lb::Endpoint& ep) {
  UpstreamConn conn(ex_, nullptr);  // a probe is not counted against the connection limit
  const SteadyTime until = SteadyAfterMs(opts_.probe_timeout_ms);
  if (error_code ec = co_await ConnectUpstream(conn, ep, until); ec) co_return false;
  if (!probe_http_) co_return true;
  const std::string path = opts_.health.path.empty() ? std::string("/") : opts_.health.path;
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: " + ep.host + ":" +
                    std::to_string(ep.port) +
                    "\r\nUser-Agent: haven-proxy-probe\r\nConnection: close\r\n\r\n";
  conn.deadline.ExpireAt(until);
  auto [wec, wn] = co_await asio::async_write(conn.socket, asio::buffer(req), kAwait);
  if (wec) co_return false;
  // Any status line proves the instance answers; what it answers is for health checks to judge.
  std::array<char, 5> head{};
  auto [rec, rn] = co_await asio::async_read(conn.socket, asio::buffer(head), kAwait);
  co_return !rec && std::string_view(head.data(), head.size()) == "HTTP/";
}

bool Cluster::AnyFull() const {
  for (const auto& e : *list_) {
    if (breaker_.IsFull(e.id)) return true;
  }
  return false;
}

std::unique_ptr<UpstreamConn> Cluster::TakeIdle(const Picked& p) {
  auto idx = CurrentIndex(p);
  if (!idx) return nullptr;
  auto& conns = slots_[*idx].idle;
  SteadyTime now = SteadyNow();
  while (!conns.empty()) {
    std::unique_ptr<UpstreamConn> c = std::move(conns.back());
    conns.pop_back();
    if (now - c->idle_since < kTrustIdleFor || !IdleConnectionDead(c->socket)) return c;
  }
  return nullptr;
}

void Cluster::ReturnIdle(const Picked& p, std::unique_ptr<UpstreamConn> conn) {
  if (draining_) return;
  auto idx = CurrentIndex(p);
  if (!idx || unhealthy_.contains(p.endpoint().id)) return;
  auto& conns = slots_[*idx].idle;
  if (conns.size() >= opts_.max_idle_per_endpoint) return;
  conn->deadline.Clear();
  conn->idle_since = SteadyNow();
  conns.push_back(std::move(conn));
}

std::unique_ptr<UpstreamConn> Cluster::NewConnection(const Picked& p) {
  const std::string& id = p.endpoint().id;
  if (!breaker_.TryAcquireConnection(id)) return nullptr;
  std::weak_ptr<bool> alive = alive_;
  return std::make_unique<UpstreamConn>(ex_, [this, alive, id] {
    if (!alive.expired()) breaker_.ReleaseConnection(id);
  });
}

boost::json::array Cluster::StatusJson() const {
  boost::json::array eps;
  MonoMs now = NowMs();
  for (size_t i = 0; i < list_->size(); ++i) {
    const lb::Endpoint& ep = (*list_)[i];
    boost::json::object e;
    e["id"] = ep.id;
    e["address"] = ep.host + ":" + std::to_string(ep.port);
    e["weight"] = ep.weight;
    e["outstanding"] = balancer_->outstanding(i);
    e["ejected"] = outlier_.IsEjected(ep.id, now);
    e["ejection_reason"] = lb::EjectionReasonName(outlier_.reason(ep.id, now));
    e["healthy"] = !unhealthy_.contains(ep.id);
    e["pending"] = breaker_.pending(ep.id);
    e["connections"] = breaker_.connections(ep.id);
    e["idle_connections"] = slots_[i].idle.size();
    eps.push_back(std::move(e));
  }
  return eps;
}

}  // namespace haven::proxy
