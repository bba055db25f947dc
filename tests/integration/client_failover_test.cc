// The C++ client library against a real haven server and 3 in-process backends: balancing,
// failover past a dead instance, outlier ejection, deregistration, and no instance at all.
#include <algorithm>
#include <atomic>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "client/service_client.h"
#include "harness.h"
#include "proxy_harness.h"

namespace haven::itest {
namespace {

class ClientFailoverTest : public ServerTest {
 protected:
  // Registers backend `i` as instance web-i with a passing TTL check (long enough for the test).
  void Register(int i) {
    std::string id = "web-" + std::to_string(i);
    Reply reg = api_->Put("/v1/agent/service/register",
                          R"({"ID":")" + id + R"(","Name":"web","Address":"127.0.0.1","Port":)" +
                              std::to_string(backends_[i]->port()) + R"(,"Check":{"TTL":"120s"}})");
    ASSERT_EQ(reg.status, 200) << reg.body;
    ASSERT_EQ(api_->Put("/v1/agent/check/pass/service:" + id).status, 200);
  }
  void Deregister(int i) {
    ASSERT_EQ(api_->Put("/v1/agent/service/deregister/web-" + std::to_string(i)).status, 200);
  }
  client::ClientOptions Options() {
    client::ClientOptions o;
    o.registry = server_->base_url();
    o.retry.per_try_timeout_ms = 1000;
    o.retry.overall_timeout_ms = 3000;
    o.watch_wait_ms = 5000;
    // These tests count failovers exactly; a scheduling hiccup on a loaded machine past the
    // adaptive per-try timeout would add one. The transition tests below use the defaults.
    o.try_timeout.multiplier = 0;
    return o;
  }
  // `n` calls from `threads` threads; returns the responses (failed calls counted in `errors`).
  std::vector<client::Response> CallMany(client::ServiceClient& c, int n, int threads,
                                         int* errors) {
    std::mutex mu;
    std::vector<client::Response> out;
    std::atomic<int> next{0}, failed{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&] {
        while (next.fetch_add(1) < n) {
          auto r = c.Call("web", client::Request{});
          if (!r.ok() || r->status != 200) {
            failed.fetch_add(1);
            if (!r.ok()) ADD_FAILURE() << r.status().ToString();
            continue;
          }
          std::lock_guard lock(mu);
          out.push_back(std::move(r).value());
        }
      });
    }
    for (auto& t : ts) t.join();
    *errors = failed.load();
    return out;
  }
  static std::map<std::string, int> CountById(const std::vector<client::Response>& rs) {
    std::map<std::string, int> m;
    for (const auto& r : rs) ++m[r.endpoint_id];
    return m;
  }
  static int Failovers(const std::vector<client::Response>& rs) {
    int n = 0;
    for (const auto& r : rs) n += r.attempts > 1;
    return n;
  }
  bool InstancesAre(client::ServiceClient& c, size_t n) {
    auto r = c.Instances("web");
    return r.ok() && r->size() == n;
  }

  std::vector<std::unique_ptr<Backend>> backends_;
};

TEST_F(ClientFailoverTest, BalancesFailsOverDrainsAndRunsOut) {
  for (int i = 0; i < 3; ++i) {
    backends_.push_back(std::make_unique<Backend>());
    ASSERT_TRUE(backends_.back()->start_status().ok());
    Register(i);
  }
  client::ServiceClient c(Options());
  ASSERT_TRUE(WaitFor([&] { return InstancesAre(c, 3); }, 5000, 20));

  // 1. Balanced: 300 calls, all succeed, every backend gets some.
  int errors = 0;
  auto rs = CallMany(c, 300, 4, &errors);
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(rs.size(), 300u);
  for (int i = 0; i < 3; ++i) EXPECT_GT(backends_[i]->hits(), 0) << "backend " << i;
  EXPECT_EQ(Failovers(rs), 0);

  // 2. Backend 0 dies but stays registered (TTL still passing): calls fail over, and once the
  // outlier detector ejected it (5 consecutive failures) no call even tries it.
  backends_[0].reset();
  rs = CallMany(c, 300, 4, &errors);
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(rs.size(), 300u);
  EXPECT_EQ(CountById(rs).count("web-0"), 0u);
  int failovers = Failovers(rs);
  EXPECT_GT(failovers, 0) << "the dead instance was never tried";
  EXPECT_LE(failovers, 12) << "not ejected after consecutive failures";
  rs = CallMany(c, 100, 1, &errors);
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(Failovers(rs), 0) << "ejected instance still tried";
  std::cout << "failovers before ejection: " << failovers << "\n";

  // 3. Deregister backend 1: it stops getting calls within a bounded time.
  const int64_t t0 = NowMs();
  Deregister(1);
  ASSERT_TRUE(WaitFor([&] { return InstancesAre(c, 2); }, 3000, 2));
  const int64_t drained_ms = NowMs() - t0;
  std::cout << "deregistered instance left the client's list after " << drained_ms << " ms\n";
  RecordProperty("deregister_to_no_calls_ms", std::to_string(drained_ms));
  EXPECT_LT(drained_ms, 1000);
  const int64_t hits1 = backends_[1]->hits();
  rs = CallMany(c, 100, 2, &errors);
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(CountById(rs).count("web-1"), 0u);
  EXPECT_EQ(backends_[1]->hits(), hits1);
  EXPECT_EQ(CountById(rs)["web-2"], 100);

  // 4. All gone: Unavailable, quickly.
  Deregister(0);
  Deregister(2);
  ASSERT_TRUE(WaitFor([&] { return InstancesAre(c, 0); }, 3000, 2));
  const int64_t t1 = NowMs();
  auto r = c.Call("web", client::Request{});
  const int64_t fail_ms = NowMs() - t1;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kUnavailable);
  EXPECT_NE(r.status().message().find("no healthy instance for service web"), std::string::npos)
      << r.status().message();
  EXPECT_LT(fail_ms, 100);
}

// A backend answering 503 is retried on another instance for an idempotent request; a POST that
// reached an instance is not retried.
TEST_F(ClientFailoverTest, WaitBasedRetryOnlyForIdempotentRequests) {
  for (int i = 0; i < 2; ++i) {
    backends_.push_back(std::make_unique<Backend>());
    ASSERT_TRUE(backends_.back()->start_status().ok());
    Register(i);
  }
  backends_[0]->set_status(503);
  client::ClientOptions o = Options();
  o.outlier.consecutive_failures = 1000;  // keep the sick instance in rotation for this test
  o.retry.budget_min_retries = 1000;
  auto owned = std::make_unique<client::ServiceClient>(o);
  client::ServiceClient& c = *owned;
  ASSERT_TRUE(WaitFor([&] { return InstancesAre(c, 2); }, 5000, 20));
  int posts_503 = 0;
  for (int n = 0; n < 40; ++n) {
    auto get = c.Call("web", client::Request{});
    ASSERT_TRUE(get.ok()) << get.status().ToString();
    EXPECT_EQ(get->status, 200);
    EXPECT_EQ(get->endpoint_id, "web-1");
    client::Request post;
    post.method = "POST";
    post.body = "x";
    auto p = c.Call("web", post);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    posts_503 += p->status == 503;
  }
  EXPECT_GT(posts_503, 0) << "a POST answered 503 was retried";
  EXPECT_GT(backends_[0]->hits(), 0);

  // The watcher is parked in a blocking query: the destructor still returns promptly.
  const int64_t t0 = NowMs();
  owned.reset();
  EXPECT_LT(NowMs() - t0, 1000);
}

// Failure transitions of the client library with its default settings (issue 7), against three
// backend processes registered in the registry and 50 threads calling at once: a SIGSTOPped
// instance costs no call and no call more than ~100 ms; a SIGKILLed one is ejected at its first
// refused connection and, restarted on its port, is back within one probe interval. Bounds are
// asserted at 5x (noisy CI); the figures are printed.
class ClientTransitionsTest : public ServerTest {
 protected:
  static constexpr int kThreads = 50;
  static constexpr int64_t kSlack = 5;

  void SetUp() override {
    ServerTest::SetUp();
    for (int i = 0; i < 3; ++i) {
      procs_.push_back(StartBackend("b" + std::to_string(i)));
      ASSERT_GT(procs_.back()->Port("backend"), 0);
      RegisterProcess(i);
    }
    client::ClientOptions o;
    o.registry = server_->base_url();
    o.watch_wait_ms = 5000;
    client_ = std::make_unique<client::ServiceClient>(o);  // otherwise the defaults
    ASSERT_TRUE(WaitFor(
        [&] {
          auto r = client_->Instances("web");
          return r.ok() && r->size() == 3;
        },
        5000, 20));
  }
  void TearDown() override {
    client_.reset();
    ServerTest::TearDown();
  }
  void RegisterProcess(int i) {
    std::string id = "web-" + std::to_string(i);
    Reply reg =
        api_->Put("/v1/agent/service/register",
                  R"({"ID":")" + id + R"(","Name":"web","Address":"127.0.0.1","Port":)" +
                      std::to_string(procs_[i]->Port("backend")) + R"(,"Check":{"TTL":"120s"}})");
    ASSERT_EQ(reg.status, 200) << reg.body;
    ASSERT_EQ(api_->Put("/v1/agent/check/pass/service:" + id).status, 200);
  }
  std::unique_ptr<TimedLoad> StartLoad() {
    auto load = std::make_unique<TimedLoad>(kThreads, [this] {
      return [c = client_.get()]() -> Result<std::pair<int, std::string>> {
        client::Request req;
        req.target = "/id";
        auto r = c->Call("web", req);
        if (!r.ok()) return r.status();
        return std::make_pair(r->status, std::move(r->body));
      };
    });
    EXPECT_TRUE(WaitFor([&] { return load->ok() > 2000 && load->backends_seen() == 3; }, 10000))
        << "warm-up: ok=" << load->ok();
    return load;
  }
  bool Ejected(const std::string& id) {
    for (const auto& e : client_->EjectedInstances("web")) {
      if (e == id) return true;
    }
    return false;
  }

  std::vector<std::unique_ptr<ChildProcess>> procs_;
  std::unique_ptr<client::ServiceClient> client_;
};

TEST_F(ClientTransitionsTest, HungInstanceCostsNoCallAndNoSlowCall) {
  auto load = StartLoad();
  const int64_t warm_max = load->TakeMaxMs();
  procs_[1]->Signal(SIGSTOP);
  Hold(2000);
  const int64_t hang_max = load->TakeMaxMs();
  procs_[1]->Signal(SIGCONT);
  const int64_t cont_at = NowMs();
  bool back = WaitFor([&] { return load->last_answer_ms("b1") > cont_at; }, 5000, 2);
  const int64_t back_ms = load->last_answer_ms("b1") - cont_at;
  Hold(1000);
  const int64_t after_max = load->TakeMaxMs();
  load->Stop();
  std::cout << "client: hang of 1 of 3 instances under " << kThreads
            << " threads: ok=" << load->ok() << " failed=" << load->failed()
            << " max_ms warm=" << warm_max << " hang=" << hang_max << " after_sigcont=" << after_max
            << " slower_than_100ms=" << load->SlowerThan(100)
            << " back_after_sigcont_ms=" << back_ms << "\n";
  EXPECT_EQ(load->failed(), 0) << "first failure: " << load->first_failure();
  // A stall of the whole machine (seen in the warm-up, before any fault) adds to any latency:
  // allowed on top, up to 500 ms, so the limit stays well below the 2 s hang it must not wait out.
  const int64_t noise = std::min<int64_t>(warm_max, 500);
  EXPECT_LT(hang_max, 100 * kSlack + noise);
  EXPECT_LT(after_max, 100 * kSlack + noise);
  EXPECT_TRUE(back) << "web-1 never answered again after SIGCONT";
}

TEST_F(ClientTransitionsTest, KilledInstanceLeavesAtOnceAndReturnsWithinAProbeInterval) {
  auto load = StartLoad();
  const int b1_port = procs_[1]->Port("backend");
  load->TakeMaxMs();
  const int64_t kill_at = NowMs();
  procs_[1]->Kill();
  ASSERT_TRUE(WaitFor([&] { return Ejected("web-1"); }, 5000, 1));
  const int64_t out_ms = NowMs() - kill_at;
  Hold(500);
  const int64_t kill_max = load->TakeMaxMs();
  procs_[1] = StartBackend("b1", b1_port);
  ASSERT_EQ(procs_[1]->Port("backend"), b1_port);
  const int64_t listening_at = NowMs();
  ASSERT_TRUE(WaitFor([&] { return load->last_answer_ms("b1") > listening_at; }, 5000, 1));
  const int64_t back_ms = load->last_answer_ms("b1") - listening_at;
  EXPECT_FALSE(Ejected("web-1"));
  load->Stop();
  std::cout << "client: kill of 1 of 3 instances under " << kThreads
            << " threads: ok=" << load->ok() << " failed=" << load->failed()
            << " out_of_rotation_ms=" << out_ms << " back_in_rotation_ms=" << back_ms
            << " max_ms kill=" << kill_max << "\n";
  EXPECT_EQ(load->failed(), 0) << "first failure: " << load->first_failure();
  EXPECT_LT(out_ms, 50 * kSlack);
  EXPECT_LT(back_ms, 100 * kSlack);
}

// Panic pick (docs/client.md): when every instance left in the registry's list is ejected, a
// call's first try goes to one of them anyway. Here web-0 is ejected (killed, then restarted on its
// port; probes off so the ejection stays), and the other two leave the registry: without the panic
// pick the call would fail "no healthy instance" although web-0 answers again.
TEST_F(ClientTransitionsTest, PanicPickReachesAnEjectedButRestartedInstance) {
  client::ClientOptions o;
  o.registry = server_->base_url();
  o.watch_wait_ms = 5000;
  o.probe_interval_ms = 0;
  client::ServiceClient c(o);
  client::Request req;
  req.target = "/id";
  ASSERT_TRUE(WaitFor(
      [&] {
        auto r = c.Instances("web");
        return r.ok() && r->size() == 3;
      },
      5000, 20));
  const int b0_port = procs_[0]->Port("backend");
  procs_[0]->Kill();
  auto ejected = [&] {
    auto e = c.EjectedInstances("web");
    return e.size() == 1 && e[0] == "web-0";
  };
  ASSERT_TRUE(WaitFor(
      [&] {
        auto r = c.Call("web", req);  // every call succeeds elsewhere; one meets web-0 dead
        EXPECT_TRUE(r.ok() && r->status == 200) << (r.ok() ? "" : r.status().ToString());
        return ejected();
      },
      5000, 1));
  procs_[0] = StartBackend("b0", b0_port);
  ASSERT_EQ(procs_[0]->Port("backend"), b0_port);
  for (int i = 1; i < 3; ++i) {
    ASSERT_EQ(api_->Put("/v1/agent/service/deregister/web-" + std::to_string(i)).status, 200);
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        auto r = c.Instances("web");
        return r.ok() && r->size() == 1;
      },
      5000, 20));
  ASSERT_TRUE(ejected());
  EXPECT_EQ(c.PanicPicks("web"), 0u);

  auto r = c.Call("web", req);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->endpoint_id, "web-0");
  EXPECT_EQ(r->attempts, 1);
  EXPECT_EQ(c.PanicPicks("web"), 1u);

  // Truly gone: the panic try is refused at once and the call fails fast, not unasked.
  procs_[0]->Kill();
  const int64_t t0 = NowMs();
  auto gone = c.Call("web", req);
  EXPECT_FALSE(gone.ok());
  EXPECT_LT(NowMs() - t0, 1000);
  EXPECT_EQ(c.PanicPicks("web"), 2u);
}

}  // namespace
}  // namespace haven::itest
