// NodeLog with its dedupe table: a client request retried with the same id is not applied again
// and gets the first outcome, also after the node restarted from a snapshot that compacted the
// original entry away (the table travels in MachineStates).
#include <gtest/gtest.h>

#include <future>
#include <string>
#include <vector>

#include "node/node_log.h"
#include "node_test_util.h"
#include "storage/mem_log_store.h"

namespace haven::node {
namespace {

using testutil::WaitUntil;

// A state machine that counts its applies and answers "r:DATA"; touched on the executor only,
// read by the test after a proposal's answer (which runs there, after the apply).
struct CountingMachine {
  int applies = 0;
  std::string last;
  std::vector<std::string> duplicates;  // first outcomes handed to duplicates

  MachineHooks Hooks() {
    MachineHooks h;
    h.apply = [this](uint64_t, const std::string& d) {
      ++applies;
      last = "r:" + d;
    };
    h.take_snapshot = [this] { return std::to_string(applies); };
    h.restore = [this](uint64_t, const std::string& s) { applies = s.empty() ? 0 : std::stoi(s); };
    h.last_result = [this] { return last; };
    h.on_duplicate = [this](uint64_t, const std::string& r) { duplicates.push_back(r); };
    return h;
  }
};

class NodeLogDedupeTest : public ::testing::Test {
 protected:
  void Start() {
    executor_ = std::make_unique<net::IoRuntime>(1);
    executor_->Start();
    machine_ = std::make_unique<CountingMachine>();
    RaftLogOptions o;
    o.node_id = 1;
    o.peers = {{1, "127.0.0.1:0"}};
    o.tick_ms = 20;
    log_ = std::make_unique<NodeLog>(store_, *executor_, o, /*snapshot_every_entries=*/4);
    log_->Register(Machine::kRegistry, machine_->Hooks());
    ASSERT_TRUE(log_->Start().ok());
  }
  void Stop() {
    log_->Stop();
    executor_->Stop();
    log_.reset();
    executor_.reset();
  }
  void TearDown() override {
    if (log_) Stop();
  }
  Status Propose(const std::string& data, const std::string& client_id) {
    std::promise<Status> p;
    log_->raft().Propose(Machine::kRegistry, data, client_id,
                         [&](Status s, uint64_t) { p.set_value(s); });
    auto f = p.get_future();
    if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      return Status::Internal("no answer");
    }
    return f.get();
  }

  storage::MemLogStore store_;
  std::unique_ptr<net::IoRuntime> executor_;
  std::unique_ptr<CountingMachine> machine_;
  std::unique_ptr<NodeLog> log_;
};

TEST_F(NodeLogDedupeTest, ARetryIsAnsweredWithTheFirstOutcomeAlsoAfterARestartFromASnapshot) {
  Start();
  ASSERT_TRUE(Propose("first", "req-1").ok());
  EXPECT_EQ(machine_->applies, 1);
  ASSERT_TRUE(Propose("retry", "req-1").ok());
  EXPECT_EQ(machine_->applies, 1);
  EXPECT_EQ(machine_->duplicates, std::vector<std::string>{"r:first"});
  ASSERT_TRUE(Propose("other", "req-2").ok());
  EXPECT_EQ(machine_->applies, 2);
  // Enough entries for a snapshot that compacts the first ones away.
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Propose("fill" + std::to_string(i), "").ok());
  ASSERT_TRUE(WaitUntil([&] { return store_.FirstIndex() > 4; })) << store_.FirstIndex();
  Stop();

  Start();  // restores the snapshot (with the table), re-applies the log after it
  ASSERT_TRUE(Propose("after-restart", "req-1").ok());
  EXPECT_EQ(machine_->duplicates, std::vector<std::string>{"r:first"});
  const int applies = machine_->applies;
  EXPECT_EQ(applies, 12);  // first, other, fill0..9: none twice
  ASSERT_TRUE(Propose("new", "req-3").ok());
  EXPECT_EQ(machine_->applies, applies + 1);
}

// A machine that puts many commands in one entry (the queues' batches) reports them: the snapshot
// comes after snapshot_every commands, not entries, so the log a restart replays stays as short.
TEST(NodeLogSnapshotTest, CommandsOfABatchEntryCountTowardTheSnapshot) {
  storage::MemLogStore store;
  net::IoRuntime executor(1);
  executor.Start();
  CountingMachine machine;
  MachineHooks hooks = machine.Hooks();
  hooks.last_commands = [] { return uint64_t{60}; };  // every entry a batch of 60
  RaftLogOptions o;
  o.node_id = 1;
  o.peers = {{1, "127.0.0.1:0"}};
  o.tick_ms = 20;
  NodeLog log(store, executor, o, /*snapshot_every_entries=*/100);
  log.Register(Machine::kQueues, std::move(hooks));
  ASSERT_TRUE(log.Start().ok());
  for (int i = 0; i < 2; ++i) {  // 120 commands in 2 entries: one snapshot
    std::promise<Status> p;
    log.raft().Propose(Machine::kQueues, "batch" + std::to_string(i),
                       [&](Status s, uint64_t) { p.set_value(s); });
    auto f = p.get_future();
    ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
    ASSERT_TRUE(f.get().ok());
  }
  const uint64_t last = store.LastIndex();
  EXPECT_TRUE(WaitUntil([&] { return store.FirstIndex() > last; }))
      << "first " << store.FirstIndex() << " last " << last;
  log.Stop();
  executor.Stop();
}

}  // namespace
}  // namespace haven::node
