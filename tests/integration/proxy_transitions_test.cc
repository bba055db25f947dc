// Failure transitions through haven proxy with its default settings (issue 7): one of three
// backends hung with SIGSTOP under 50 concurrent keep-alive clients costs no request and no
// request more than ~100 ms; a SIGKILLed backend is out of rotation at its first failure; a
// restarted one is back within one probe interval. Bounds are asserted at 5x (a noisy 2-core CI;
// latencies also get the warm-up's own worst, a machine stall, on top, at most 500 ms);
// the measured figures are printed.
#include <signal.h>

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "harness.h"
#include "proxy_harness.h"

namespace haven::itest {
namespace {

constexpr int kClients = 50;
constexpr int64_t kHangBoundMs = 100;    // issue 7: no request slower during a hang
constexpr int64_t kEjectBoundMs = 50;    // out of rotation after the first failure
constexpr int64_t kReturnBoundMs = 100;  // back in rotation after listening again
constexpr int64_t kSlack = 5;            // asserted at 5x the bound: CI machines are noisy

class ProxyTransitionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 3; ++i) {
      backends_.push_back(StartBackend("b" + std::to_string(i)));
      ASSERT_GT(backends_.back()->Port("backend"), 0);
    }
    std::vector<std::string> args = {"--threads", "2"};
    for (auto& b : backends_) {
      args.push_back("--upstream");
      args.push_back("127.0.0.1:" + std::to_string(b->Port("backend")));
    }
    proxy_ = StartProxy(args);  // the defaults: no tuning
    port_ = proxy_->Port("proxy");
    admin_port_ = proxy_->Port("admin");
    ASSERT_GT(port_, 0);
    ASSERT_GT(admin_port_, 0);
  }
  void TearDown() override {
    if (HasFailure() && proxy_)
      std::cerr << "proxy log (tail):\n" << Tail(proxy_->ReadLog()) << "\n";
  }
  static std::string Tail(const std::string& log) {
    return log.size() > 6000 ? log.substr(log.size() - 6000) : log;
  }
  std::unique_ptr<TimedLoad> StartLoad() {
    auto load = std::make_unique<TimedLoad>(kClients, [this] { return HttpCall(port_); });
    EXPECT_TRUE(WaitFor([&] { return load->ok() > 3000 && load->backends_seen() == 3; }, 10000))
        << "warm-up: ok=" << load->ok();
    return load;
  }
  std::string Status() {
    Api admin(Url(admin_port_), 5000);
    return admin.Get("/status").body;
  }
  // How many workers see the instance at `port` ejected, from /status.
  int EjectedOn(int port) {
    std::string body = Status();
    std::string addr = "\"address\":\"127.0.0.1:" + std::to_string(port) + "\"";
    int n = 0;
    for (size_t at = body.find(addr); at != std::string::npos; at = body.find(addr, at + 1)) {
      size_t end = body.find('}', at);
      size_t ej = body.find("\"ejected\":true", at);
      n += ej != std::string::npos && ej < end;
    }
    return n;
  }
  double Metric(const std::string& name) {
    Api admin(Url(admin_port_), 5000);
    return MetricValue(admin.Get("/metrics").body, name).value_or(-1);
  }

  std::vector<std::unique_ptr<ChildProcess>> backends_;
  std::unique_ptr<ChildProcess> proxy_;
  int port_ = 0;
  int admin_port_ = 0;
};

TEST_F(ProxyTransitionsTest, HungBackendCostsNoRequestAndNoSlowRequest) {
  auto load = StartLoad();
  const int64_t warm_max = load->TakeMaxMs();
  backends_[1]->Signal(SIGSTOP);
  Hold(2000);
  const int64_t hang_max = load->TakeMaxMs();
  const int64_t b1_before_cont = load->answers("b1");
  backends_[1]->Signal(SIGCONT);
  const int64_t cont_at = NowMs();
  // The probe of the ejected instance gets its answer once it runs again: back in rotation.
  bool back = WaitFor([&] { return load->last_answer_ms("b1") > cont_at; }, 5000, 2);
  const int64_t back_ms = load->last_answer_ms("b1") - cont_at;
  Hold(1000);
  const int64_t after_max = load->TakeMaxMs();
  load->Stop();
  std::cout << "hang of 1 of 3 backends under " << kClients << " clients: ok=" << load->ok()
            << " failed=" << load->failed() << " max_ms warm=" << warm_max << " hang=" << hang_max
            << " after_sigcont=" << after_max << " slower_than_100ms=" << load->SlowerThan(100)
            << " back_after_sigcont_ms=" << back_ms
            << " try_timeouts=" << Metric("haven_proxy_try_timeouts_total{service=\"static\"}")
            << " ejections_timeout="
            << Metric("haven_proxy_ejections_total{service=\"static\",reason=\"timeout\"}") << "\n";
  EXPECT_EQ(load->failed(), 0) << "first failure: " << load->first_failure();
  // A stall of the whole machine (seen in the warm-up, before any fault) adds to any latency:
  // allowed on top, up to 500 ms, so the limit stays well below the 2 s hang it must not wait out.
  const int64_t noise = std::min<int64_t>(warm_max, 500);
  EXPECT_LT(hang_max, kHangBoundMs * kSlack + noise);
  EXPECT_LT(after_max, kHangBoundMs * kSlack + noise);
  EXPECT_GE(Metric("haven_proxy_try_timeouts_total{service=\"static\"}"), 1)
      << "the hang was never noticed";
  if (getenv("HAVEN_TEST_PROXY_LOG")) std::cout << proxy_->ReadLog();
  EXPECT_TRUE(back) << "b1 never answered again after SIGCONT (answers before: " << b1_before_cont
                    << ")\n"
                    << Status();
}

TEST_F(ProxyTransitionsTest, KilledBackendLeavesAtOnceAndReturnsWithinAProbeInterval) {
  auto load = StartLoad();
  const int b1_port = backends_[1]->Port("backend");
  load->TakeMaxMs();
  const int64_t kill_at = NowMs();
  backends_[1]->Kill();
  // Out of rotation on both workers: each ejects at its first refused/reset connection.
  ASSERT_TRUE(WaitFor([&] { return EjectedOn(b1_port) == 2; }, 5000, 1)) << Status();
  const int64_t out_ms = NowMs() - kill_at;
  Hold(500);
  const int64_t kill_max = load->TakeMaxMs();
  backends_[1] = StartBackend("b1", b1_port);
  ASSERT_EQ(backends_[1]->Port("backend"), b1_port);
  const int64_t listening_at = NowMs();  // the listening line was read: it listens since before
  ASSERT_TRUE(WaitFor([&] { return load->last_answer_ms("b1") > listening_at; }, 5000, 1))
      << Status();
  const int64_t back_ms = load->last_answer_ms("b1") - listening_at;
  ASSERT_TRUE(WaitFor([&] { return EjectedOn(b1_port) == 0; }, 5000, 1)) << Status();
  Hold(300);
  const int64_t after_max = load->TakeMaxMs();
  load->Stop();
  std::cout << "kill of 1 of 3 backends under " << kClients << " clients: ok=" << load->ok()
            << " failed=" << load->failed() << " out_of_rotation_ms=" << out_ms
            << " back_in_rotation_ms=" << back_ms << " max_ms kill=" << kill_max
            << " after_restart=" << after_max << " ejections_connect="
            << Metric("haven_proxy_ejections_total{service=\"static\",reason=\"connect\"}")
            << " probes_pass="
            << Metric("haven_proxy_probes_total{service=\"static\",result=\"pass\"}") << "\n";
  EXPECT_EQ(load->failed(), 0) << "first failure: " << load->first_failure();
  EXPECT_LT(out_ms, kEjectBoundMs * kSlack);
  EXPECT_LT(back_ms, kReturnBoundMs * kSlack);
  EXPECT_GE(Metric("haven_proxy_ejections_total{service=\"static\",reason=\"connect\"}"), 1);
  EXPECT_GE(Metric("haven_proxy_probes_total{service=\"static\",result=\"pass\"}"), 1);
}

// A slow but healthy answer still arrives: a non-idempotent request keeps the configured per-try
// timeout (it cannot be retried once sent), and a retryable one gets it on its last attempt.
TEST_F(ProxyTransitionsTest, SlowAnswersAreNotCutShortByTheAdaptiveTimeout) {
  auto load = StartLoad();
  load->Stop();
  const double retries_before = Metric("haven_proxy_retries_total{service=\"static\"}");
  net::HttpClient client(Url(port_), 10000);
  auto post = client.Request("POST", "/echo?sleep=400", "x");
  ASSERT_TRUE(post.ok()) << post.status().ToString();
  EXPECT_EQ(post->status, 200) << post->body;
  EXPECT_EQ(post->body, "x");
  const double retries_after_post = Metric("haven_proxy_retries_total{service=\"static\"}");
  EXPECT_EQ(retries_after_post, retries_before) << "a POST was retried";
  const int64_t t0 = NowMs();
  auto get = client.Request("GET", "/id?sleep=400");
  const int64_t get_ms = NowMs() - t0;
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  EXPECT_EQ(get->status, 200) << get->body;
  // Its first tries timed out at the adaptive timeout (learnt from the fast warm-up): retried.
  EXPECT_GE(Metric("haven_proxy_retries_total{service=\"static\"}"), retries_after_post + 1);
  std::cout << "slow GET (400 ms) answered after " << get_ms << " ms\n";
}

}  // namespace
}  // namespace haven::itest
