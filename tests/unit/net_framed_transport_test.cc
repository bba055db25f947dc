// FramedTransport over loopback: frames arrive whole and in order, peers that are down cost
// dropped frames (not blocking), oversized frames are refused, and a restarted peer is reached
// again.
#include "net/framed_transport.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace haven::net {
namespace {

// Collects received frames; waits for a count with a deadline.
class Inbox {
 public:
  FramedTransport::OnFrame Callback() {
    return [this](std::string f) {
      std::lock_guard lock(mu_);
      frames_.push_back(std::move(f));
      cv_.notify_all();
    };
  }
  bool WaitFor(size_t n, int64_t ms = 5000) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::milliseconds(ms), [&] { return frames_.size() >= n; });
  }
  std::vector<std::string> frames() {
    std::lock_guard lock(mu_);
    return frames_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> frames_;
};

TEST(NetFramedTransportTest, FramesArriveWholeAndInOrder) {
  Inbox inbox;
  FramedTransport b({}, inbox.Callback());
  ASSERT_TRUE(b.Start().ok());
  FramedTransport a({}, [](std::string) {});
  ASSERT_TRUE(a.Start().ok());
  const int kFrames = 2000;
  for (int i = 0; i < kFrames; ++i) {
    a.Send(b.address(), std::to_string(i) + std::string(static_cast<size_t>(i % 700), 'x'));
  }
  a.Send(b.address(), "");                         // empty frames are frames too
  a.Send(b.address(), std::string(3 << 20, 'y'));  // larger than one coalesced write
  ASSERT_TRUE(inbox.WaitFor(kFrames + 2));
  auto got = inbox.frames();
  for (int i = 0; i < kFrames; ++i) {
    ASSERT_EQ(got[i], std::to_string(i) + std::string(static_cast<size_t>(i % 700), 'x')) << i;
  }
  EXPECT_EQ(got[kFrames], "");
  EXPECT_EQ(got[kFrames + 1].size(), size_t{3} << 20);
  EXPECT_EQ(a.stats().frames_sent, kFrames + 2u);
  EXPECT_EQ(b.stats().frames_received, kFrames + 2u);
}

TEST(NetFramedTransportTest, UnreachablePeerDropsWithoutBlockingAndRecovers) {
  FramedTransportOptions ao;
  ao.reconnect_backoff_ms = 50;
  FramedTransport a(ao, [](std::string) {});
  ASSERT_TRUE(a.Start().ok());
  // A port nothing listens on: take one, then close it.
  std::string dead;
  {
    FramedTransport probe({}, [](std::string) {});
    ASSERT_TRUE(probe.Start().ok());
    dead = probe.address();
  }
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) a.Send(dead, "lost");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1)) << "Send blocked";
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (a.stats().frames_dropped < 100 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(a.stats().frames_dropped, 100u);
  EXPECT_GE(a.stats().connect_failures, 1u);

  // The peer comes up on that address: after the backoff, frames flow again.
  Inbox inbox;
  FramedTransportOptions bo;
  bo.listen = dead;
  FramedTransport b(bo, inbox.Callback());
  ASSERT_TRUE(b.Start().ok());
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (inbox.frames().empty() && std::chrono::steady_clock::now() < deadline) {
    a.Send(dead, "hello");
    inbox.WaitFor(1, 20);
  }
  ASSERT_FALSE(inbox.frames().empty());
  EXPECT_EQ(inbox.frames().front(), "hello");
}

TEST(NetFramedTransportTest, OversizedFramesAreRefusedOnBothSides) {
  Inbox inbox;
  FramedTransportOptions small;
  small.max_frame_bytes = 1024;
  FramedTransport b(small, inbox.Callback());
  ASSERT_TRUE(b.Start().ok());
  FramedTransport a(small, [](std::string) {});
  ASSERT_TRUE(a.Start().ok());
  a.Send(b.address(), std::string(2048, 'z'));
  EXPECT_EQ(a.stats().frames_dropped, 1u) << "the sender refuses it";
  // A sender with a larger limit: the receiver ends the connection instead of allocating.
  FramedTransport big({}, [](std::string) {});
  ASSERT_TRUE(big.Start().ok());
  big.Send(b.address(), std::string(4096, 'z'));
  big.Send(b.address(), "after");
  a.Send(b.address(), "ok");
  ASSERT_TRUE(inbox.WaitFor(1));
  EXPECT_EQ(inbox.frames().front(), "ok");
}

}  // namespace
}  // namespace haven::net
