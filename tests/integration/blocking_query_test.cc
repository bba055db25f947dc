// Blocking queries: a parked GET wakes promptly on a change and times out on schedule without one.
#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "harness.h"

namespace haven::itest {
namespace {

// How late a woken query may come back after the write that woke it was acknowledged.
constexpr int64_t kWakeSlackMs = 50;

// A GET running in its own thread with its own connection (the client is single-caller).
class BlockedGet {
 public:
  BlockedGet(const std::string& base_url, std::string target)
      : thread_([this, base_url, target = std::move(target)] {
          Api api(base_url, 20000);
          started_at_ = NowMs();
          reply_ = api.Get(target);
          returned_at_ = NowMs();
          done_.store(true);
        }) {}
  ~BlockedGet() { Join(); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  bool done() const { return done_.load(); }
  // Valid after done().
  const Reply& reply() const { return reply_; }
  int64_t returned_at() const { return returned_at_; }
  int64_t started_at() const { return started_at_; }

 private:
  Reply reply_;
  int64_t started_at_ = 0;
  int64_t returned_at_ = 0;
  std::atomic<bool> done_{false};
  std::thread thread_;
};

class BlockingQueryTest : public ServerTest {
 protected:
  // Parks a GET at `index`, runs `write` (which returns its acknowledged Reply), and checks that
  // the GET comes back within kWakeSlackMs of the ack with a larger index. Returns the GET's reply.
  Reply ExpectWakeOnWrite(const std::string& path, uint64_t index,
                          const std::function<Reply()>& write) {
    BlockedGet get(server_->base_url(), path + (path.find('?') == std::string::npos ? "?" : "&") +
                                            "index=" + std::to_string(index) + "&wait=10s");
    // It must stay parked while nothing changes (this also gives it time to reach the server).
    EXPECT_FALSE(WaitFor([&] { return get.done(); }, 150, 5))
        << path << " returned without a change: " << get.reply().body;
    Reply ack = write();
    const int64_t acked_at = NowMs();
    EXPECT_EQ(ack.status, 200) << ack.body;
    EXPECT_TRUE(WaitFor([&] { return get.done(); }, 3000, 1)) << path << " did not wake";
    get.Join();
    EXPECT_EQ(get.reply().status, 200) << get.reply().body;
    EXPECT_LE(get.returned_at() - acked_at, kWakeSlackMs)
        << path << " woke " << get.returned_at() - acked_at << " ms after the write's ack";
    EXPECT_GT(get.reply().index, index) << path;
    return get.reply();
  }
};

TEST_F(BlockingQueryTest, KvGetWakesOnPut) {
  ASSERT_EQ(api_->Put("/v1/kv/k", "v0").status, 200);
  Reply first = api_->Get("/v1/kv/k");
  ASSERT_EQ(first.status, 200);
  ASSERT_GT(first.index, 0u) << "X-Consul-Index missing";
  Reply woke =
      ExpectWakeOnWrite("/v1/kv/k", first.index, [&] { return api_->Put("/v1/kv/k", "v1"); });
  EXPECT_NE(woke.body.find("djE="), std::string::npos) << "expected value v1: " << woke.body;
}

TEST_F(BlockingQueryTest, HealthServiceWakesOnStatusChange) {
  ASSERT_EQ(api_->Put("/v1/agent/service/register",
                      R"({"ID":"bq1","Name":"bq","Port":1,"Check":{"TTL":"30s"}})")
                .status,
            200);
  Reply first = api_->Get("/v1/health/service/bq");
  ASSERT_EQ(first.status, 200);
  ASSERT_GT(first.index, 0u);
  Reply woke = ExpectWakeOnWrite("/v1/health/service/bq", first.index,
                                 [&] { return api_->Put("/v1/agent/check/pass/service:bq1"); });
  EXPECT_NE(woke.body.find("passing"), std::string::npos) << woke.body;

  // With ?passing the list grows from empty when the instance turns healthy.
  ASSERT_EQ(api_->Put("/v1/agent/check/fail/service:bq1").status, 200);
  Reply empty = api_->Get("/v1/health/service/bq?passing");
  ASSERT_EQ(empty.body, "[]");
  Reply grown = ExpectWakeOnWrite("/v1/health/service/bq?passing", empty.index,
                                  [&] { return api_->Put("/v1/agent/check/pass/service:bq1"); });
  EXPECT_NE(grown.body.find("bq1"), std::string::npos) << grown.body;
}

TEST_F(BlockingQueryTest, CatalogServicesWakesOnRegister) {
  Reply first = api_->Get("/v1/catalog/services");
  ASSERT_EQ(first.status, 200);
  ASSERT_GT(first.index, 0u);
  Reply woke = ExpectWakeOnWrite("/v1/catalog/services", first.index, [&] {
    return api_->Put("/v1/agent/service/register", R"({"ID":"new1","Name":"newsvc","Port":2})");
  });
  EXPECT_NE(woke.body.find("newsvc"), std::string::npos) << woke.body;
}

TEST_F(BlockingQueryTest, WaitExpiresWithSameIndex) {
  ASSERT_EQ(api_->Put("/v1/kv/quiet", "x").status, 200);
  Reply first = api_->Get("/v1/kv/quiet");
  ASSERT_EQ(first.status, 200);
  const int64_t start = NowMs();
  Reply r = api_->Get("/v1/kv/quiet?index=" + std::to_string(first.index) + "&wait=200ms");
  const int64_t took = NowMs() - start;
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_GE(took, 150) << "returned before the wait ended";
  EXPECT_LE(took, 1500) << "wait=200ms took far too long";
  EXPECT_EQ(r.index, first.index);
}

TEST_F(BlockingQueryTest, KvQueryIgnoresOtherKeys) {
  ASSERT_EQ(api_->Put("/v1/kv/watched", "1").status, 200);
  Reply kv = api_->Get("/v1/kv/watched");
  BlockedGet get(server_->base_url(),
                 "/v1/kv/watched?index=" + std::to_string(kv.index) + "&wait=10s");
  ASSERT_FALSE(WaitFor([&] { return get.done(); }, 100, 5));
  // Writes elsewhere move the global index but not the data this query reads.
  ASSERT_EQ(api_->Put("/v1/kv/elsewhere", "x").status, 200);
  ASSERT_EQ(
      api_->Put("/v1/agent/service/register", R"({"ID":"o1","Name":"other","Port":1})").status,
      200);
  EXPECT_FALSE(WaitFor([&] { return get.done(); }, 300, 5)) << "woke for another key";
  ASSERT_EQ(api_->Put("/v1/kv/watched", "2").status, 200);
  EXPECT_TRUE(WaitFor([&] { return get.done(); }, 3000, 5));
}

// One service's watchers (every proxy keeps one per service) must not all wake whenever any other
// service changes, as Consul's per-service index avoids.
TEST_F(BlockingQueryTest, HealthQueryIgnoresOtherServices) {
  ASSERT_EQ(
      api_->Put("/v1/agent/service/register", R"({"ID":"w1","Name":"watched","Port":1})").status,
      200);
  Reply health = api_->Get("/v1/health/service/watched");
  BlockedGet get(server_->base_url(),
                 "/v1/health/service/watched?index=" + std::to_string(health.index) + "&wait=10s");
  ASSERT_FALSE(WaitFor([&] { return get.done(); }, 100, 5));
  ASSERT_EQ(
      api_->Put("/v1/agent/service/register", R"({"ID":"o1","Name":"other","Port":1})").status,
      200);
  ASSERT_EQ(api_->Put("/v1/kv/elsewhere", "x").status, 200);
  EXPECT_FALSE(WaitFor([&] { return get.done(); }, 300, 5))
      << "woke for another service; body unchanged: " << (get.reply().body == health.body);
  ASSERT_EQ(
      api_->Put("/v1/agent/service/register", R"({"ID":"w2","Name":"watched","Port":2})").status,
      200);
  EXPECT_TRUE(WaitFor([&] { return get.done(); }, 3000, 5));
}

// A parked query must not hold up shutdown for the rest of its wait.
TEST_F(BlockingQueryTest, SigtermWithParkedQueryExitsPromptly) {
  ASSERT_EQ(api_->Put("/v1/kv/p", "1").status, 200);
  Reply first = api_->Get("/v1/kv/p");
  BlockedGet get(server_->base_url(),
                 "/v1/kv/p?index=" + std::to_string(first.index) + "&wait=15s");
  ASSERT_FALSE(WaitFor([&] { return get.done(); }, 150, 5));
  const int64_t start = NowMs();
  auto exit = server_->Terminate(3000);
  ASSERT_TRUE(exit.ok()) << exit.status().ToString();
  EXPECT_TRUE(exit->exited && exit->code == 0)
      << "code " << exit->code << " signal " << exit->signal;
  EXPECT_LE(NowMs() - start, 3000);
  EXPECT_TRUE(WaitFor([&] { return get.done(); }, 3000, 5)) << "parked client never released";
}

TEST_F(BlockingQueryTest, MissingKeyBlocksUntilCreated) {
  Reply missing = api_->Get("/v1/kv/later");
  ASSERT_EQ(missing.status, 404);
  ASSERT_GT(missing.index, 0u) << "a 404 still carries X-Consul-Index";
  ExpectWakeOnWrite("/v1/kv/later", missing.index,
                    [&] { return api_->Put("/v1/kv/later", "now"); });
}

}  // namespace
}  // namespace haven::itest
