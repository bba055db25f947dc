#include "proxy/proxy.h"

#include <pthread.h>
#include <csignal>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <boost/json.hpp>

#include "base/log.h"
#include "base/metrics.h"
#include "net/http_server.h"
#include "net/io_runtime.h"
#include "proxy/discovery.h"
#include "proxy/health_checker.h"
#include "proxy/proxy_metrics.h"
#include "proxy/worker.h"

namespace haven::proxy {

struct ProxyServer::Impl {
  ProxyOptions opts;
  std::vector<std::unique_ptr<ClusterMetrics>> metrics;  // parallel to opts.clusters
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::unique_ptr<Discovery>> discovery;   // registry clusters
  std::vector<std::unique_ptr<HealthChecker>> health;  // static clusters with a health path
  std::unique_ptr<net::IoRuntime> admin_io;
  std::unique_ptr<net::HttpServer> admin;
  std::vector<std::string> addresses;
  bool started = false;
  bool stopped = false;

  Status StartWorkers();  // binds; the threads start later
  void StartDiscovery();  // waits (bounded) for every registry cluster's first list
  static constexpr int64_t kFirstDiscoveryMs = 5'000;
  Status StartAdmin();
  void StartHealthChecks();
  void HandleAdmin(const net::HttpRequest& req, net::Responder respond);
  void HandleStatus(net::Responder respond);
};

ProxyServer::ProxyServer(ProxyOptions opts) : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(opts);
  if (impl_->opts.threads == 0) {
    impl_->opts.threads =
        std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, kMaxThreads);
  }
}

ProxyServer::~ProxyServer() { Shutdown(0); }

Status ProxyServer::Impl::StartWorkers() {
  for (const ClusterOptions& c : opts.clusters) {
    metrics.push_back(std::make_unique<ClusterMetrics>(c.name));
  }
  for (int i = 0; i < opts.threads; ++i) {
    workers.push_back(std::make_unique<Worker>(i, opts, metrics));
  }
  for (size_t l = 0; l < opts.listeners.size(); ++l) {
    auto listen = ParseListen(opts.listeners[l].listen);
    if (!listen.ok()) return listen.status();
    error_code ec;
    auto addr = asio::ip::make_address(listen->host, ec);
    if (ec) return Status::InvalidArgument("listen needs an IP address, got " + listen->host);
    uint16_t port = listen->port;
    // The first worker may take an ephemeral port; the others share it through SO_REUSEPORT.
    for (auto& w : workers) {
      if (Status s = w->Bind(l, tcp::endpoint(addr, port)); !s.ok()) return s;
      port = w->bound_port(l);
    }
    addresses.push_back(listen->host + ":" + std::to_string(port));
  }
  for (size_t c = 0; c < opts.clusters.size(); ++c) {
    if (opts.clusters[c].upstreams.empty()) continue;
    auto eps = ParseUpstreams(opts.clusters[c].upstreams);
    if (!eps.ok()) return eps.status();
    auto snap = std::make_shared<const std::vector<lb::Endpoint>>(std::move(eps.value()));
    for (auto& w : workers) w->SetEndpoints(c, snap);  // before the threads start: no race
  }
  return Status::Ok();
}

void ProxyServer::Impl::StartDiscovery() {
  struct First {
    std::mutex mu;
    std::condition_variable cv;
    size_t waiting = 0;
  };
  auto first = std::make_shared<First>();
  for (size_t c = 0; c < opts.clusters.size(); ++c) {
    const ClusterOptions& co = opts.clusters[c];
    if (co.service.empty()) continue;
    ++first->waiting;
    DiscoveryOptions d{co.registry, co.service, opts.watch_wait_ms, 1000};
    auto delivered = std::make_shared<bool>(false);
    discovery.push_back(
        std::make_unique<Discovery>(d, [this, c, first, delivered](const EndpointSnapshot& snap) {
          for (auto& w : workers) w->PostEndpoints(c, snap);
          std::lock_guard lock(first->mu);
          if (!*delivered) {
            *delivered = true;
            --first->waiting;
            first->cv.notify_all();
          }
        }));
    discovery.back()->Start();
  }
  // Workers take no client before the first lists arrive (posted ahead of any accept), so a proxy
  // that just started does not answer 503 for a service that has instances.
  std::unique_lock lock(first->mu);
  if (!first->cv.wait_for(lock, std::chrono::milliseconds(kFirstDiscoveryMs),
                          [&] { return first->waiting == 0; })) {
    HLOG_WARN("proxy_discovery_slow", "clusters_waiting={} waited_ms={}", first->waiting,
              kFirstDiscoveryMs);
  }
}

void ProxyServer::Impl::StartHealthChecks() {
  for (size_t c = 0; c < opts.clusters.size(); ++c) {
    const ClusterOptions& co = opts.clusters[c];
    if (co.health.path.empty()) continue;
    auto eps = ParseUpstreams(co.upstreams);
    if (!eps.ok()) continue;  // validated before: cannot happen
    health.push_back(std::make_unique<HealthChecker>(
        co.health, *eps, *metrics[c], [this, c](const std::string& id, bool healthy) {
          for (auto& w : workers) w->PostHealth(c, id, healthy);
        }));
    health.back()->Start();
    HLOG_INFO("proxy_health_checks", "cluster={} path={} interval_ms={} timeout_ms={} upstreams={}",
              co.name, co.health.path, co.health.interval_ms, co.health.timeout_ms, eps->size());
  }
}

void ProxyServer::Impl::HandleStatus(net::Responder respond) {
  struct Gather {
    std::mutex mu;
    boost::json::array parts;
    size_t left;
    net::Responder respond;
    boost::json::object head;
  };
  auto g = std::make_shared<Gather>();
  g->left = workers.size();
  g->respond = std::move(respond);
  boost::json::array listeners, clusters;
  for (size_t l = 0; l < opts.listeners.size(); ++l) {
    boost::json::object o;
    o["address"] = addresses[l];
    o["mode"] = opts.listeners[l].mode == ListenerMode::kTcp ? "tcp" : "http";
    listeners.push_back(std::move(o));
  }
  for (const ClusterOptions& c : opts.clusters) {
    boost::json::object o;
    o["name"] = c.name;
    o["policy"] = lb::PolicyName(c.policy);
    o["service"] = c.service;
    clusters.push_back(std::move(o));
  }
  g->head["listeners"] = std::move(listeners);
  g->head["clusters"] = std::move(clusters);
  for (auto& w : workers) {
    w->PostStatus([g](boost::json::object part) {
      std::lock_guard lock(g->mu);
      g->parts.push_back(std::move(part));
      if (--g->left > 0) return;
      boost::json::object o = std::move(g->head);
      o["workers"] = std::move(g->parts);
      g->respond(net::HttpResponse{200, "application/json", {}, boost::json::serialize(o)});
    });
  }
}

void ProxyServer::Impl::HandleAdmin(const net::HttpRequest& req, net::Responder respond) {
  if (req.method != "GET") {
    respond({405, "text/plain", {}, "only GET\n"});
  } else if (req.path == "/metrics") {
    respond(
        {200, "text/plain; version=0.0.4", {}, metrics::Registry::Default().RenderPrometheus()});
  } else if (req.path == "/status") {
    HandleStatus(std::move(respond));
  } else {
    respond({404, "text/plain", {}, "not found: try /metrics or /status\n"});
  }
}

Status ProxyServer::Impl::StartAdmin() {
  if (opts.admin.empty()) return Status::Ok();
  auto at = ParseListen(opts.admin);
  if (!at.ok()) return at.status();
  admin_io = std::make_unique<net::IoRuntime>(1);
  net::HttpServerOptions ho;
  ho.host = at->host;
  ho.port = at->port;
  ho.max_connections = 64;
  admin = std::make_unique<net::HttpServer>(
      *admin_io, ho,
      [this](const net::HttpRequest& req, net::Responder r) { HandleAdmin(req, std::move(r)); });
  if (Status s = admin->Start(); !s.ok()) return s;
  admin_io->Start();
  return Status::Ok();
}

Status ProxyServer::Start() {
  if (impl_->started) return Status::Ok();
  if (Status s = ValidateProxyOptions(impl_->opts); !s.ok()) return s;
  impl_->started = true;
  if (Status s = impl_->StartWorkers(); !s.ok()) return s;
  if (Status s = impl_->StartAdmin(); !s.ok()) return s;
  impl_->StartDiscovery();
  for (auto& w : impl_->workers) w->Start();
  impl_->StartHealthChecks();
  return Status::Ok();
}

std::string ProxyServer::address() const {
  return impl_->addresses.empty() ? "" : impl_->addresses.front();
}

std::vector<std::string> ProxyServer::addresses() const { return impl_->addresses; }

std::string ProxyServer::admin_address() const {
  return impl_->admin ? impl_->admin->address() : "";
}

void ProxyServer::Shutdown(int64_t deadline_ms) {
  if (impl_->stopped) return;
  impl_->stopped = true;
  for (auto& h : impl_->health) h->Stop();  // before the workers they post to go away
  for (auto& d : impl_->discovery) d->Stop();
  for (auto& w : impl_->workers) w->PostDrain();
  MonoMs until = NowMs() + deadline_ms;
  auto busy = [&] {
    return std::any_of(impl_->workers.begin(), impl_->workers.end(),
                       [](const auto& w) { return w->inflight() > 0; });
  };
  while (busy() && NowMs() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (impl_->admin) impl_->admin->Stop();
  if (impl_->admin_io) impl_->admin_io->Stop();
  for (auto& w : impl_->workers) w->Stop();
  impl_->workers.clear();
  impl_->discovery.clear();
  impl_->health.clear();
}

int RunProxy(const ProxyOptions& opts) {
  if (Status s = ValidateProxyOptions(opts); !s.ok()) {
    HLOG_ERROR("proxy_bad_options", "error=\"{}\"", s.message());
    return 2;
  }
  // Blocked before any thread starts, so only sigwait below sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ProxyServer server(opts);
  if (Status s = server.Start(); !s.ok()) {
    HLOG_ERROR("proxy_start_failed", "error=\"{}\"", s.ToString());
    return 1;
  }
  std::string all;
  for (size_t i = 0; i < opts.listeners.size(); ++i) {
    const ListenerOptions& l = opts.listeners[i];
    HLOG_INFO("listener", "address={} mode={} routes={}", server.addresses()[i],
              l.mode == ListenerMode::kTcp ? "tcp" : "http", l.routes.size());
    all += (i ? "," : "") + server.addresses()[i];
  }
  for (const ClusterOptions& c : opts.clusters) {
    HLOG_INFO("cluster", "name={} lb={} upstreams={} service={}", c.name, lb::PolicyName(c.policy),
              c.upstreams.size(), c.service.empty() ? "-" : c.service);
  }
  // One line with every address, last: tests and scripts wait for it.
  HLOG_INFO("listening", "proxy={} admin={} listeners={} threads={}", server.address(),
            server.admin_address().empty() ? "-" : server.admin_address(), all, opts.threads);
  int sig = 0;
  sigwait(&signals, &sig);
  HLOG_INFO("shutting_down", "signal={} drain_ms={}", sig, opts.drain_timeout_ms);
  server.Shutdown(opts.drain_timeout_ms);
  HLOG_INFO("stopped", "proxy={}", server.address());
  return 0;
}

}  // namespace haven::proxy
