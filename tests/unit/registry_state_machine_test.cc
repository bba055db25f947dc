#include "registry/state_machine.h"

#include <gmock/gmock.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

namespace haven::registry {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr int64_t kNow = 1'700'000'000'000;

pb::Check MakeCheck(const std::string& id, const std::string& status = "") {
  pb::Check c;
  c.set_id(id);
  c.set_name(id);
  c.set_status(status);
  return c;
}

pb::Command RegisterService(const std::string& node, const std::string& name, const std::string& id,
                            std::vector<std::string> tags = {}, std::vector<pb::Check> checks = {},
                            int port = 8080) {
  pb::Command cmd;
  cmd.set_now_unix_ms(kNow);
  auto* r = cmd.mutable_register_service();
  r->mutable_node()->set_name(node);
  r->mutable_node()->set_address("10.0.0.1");
  r->mutable_service()->set_name(name);
  r->mutable_service()->set_id(id);
  r->mutable_service()->set_port(port);
  for (auto& t : tags) r->mutable_service()->add_tags(t);
  for (auto& c : checks) *r->add_checks() = c;
  return cmd;
}

pb::Command RegisterNode(const std::string& node, std::vector<pb::Check> checks = {}) {
  pb::Command cmd;
  cmd.set_now_unix_ms(kNow);
  cmd.mutable_register_node()->mutable_node()->set_name(node);
  for (auto& c : checks) *cmd.mutable_register_node()->add_checks() = c;
  return cmd;
}

pb::Command Deregister(const std::string& node, const std::string& service_id = "",
                       const std::string& check_id = "") {
  pb::Command cmd;
  cmd.set_now_unix_ms(kNow);
  cmd.mutable_deregister()->set_node(node);
  cmd.mutable_deregister()->set_service_id(service_id);
  cmd.mutable_deregister()->set_check_id(check_id);
  return cmd;
}

pb::Command SetStatus(const std::string& node, const std::string& check, const std::string& status,
                      const std::string& output = "") {
  pb::Command cmd;
  cmd.set_now_unix_ms(kNow);
  auto* s = cmd.mutable_set_check_status();
  s->set_node(node);
  s->set_check_id(check);
  s->set_status(status);
  s->set_output(output);
  return cmd;
}

pb::KVOp Op(pb::KVOp::Verb verb, const std::string& key, const std::string& value = "",
            uint64_t cas = 0, const std::string& session = "") {
  pb::KVOp op;
  op.set_verb(verb);
  op.set_key(key);
  op.set_value(value);
  op.set_cas_index(cas);
  op.set_session(session);
  return op;
}

pb::Command KV(const pb::KVOp& op, int64_t now = kNow) {
  pb::Command cmd;
  cmd.set_now_unix_ms(now);
  *cmd.mutable_kv() = op;
  return cmd;
}

pb::Command SessionCreate(const std::string& id, const std::string& node,
                          std::vector<std::string> checks = {}, const std::string& behavior = "",
                          int64_t lock_delay_ms = 15'000) {
  pb::Command cmd;
  cmd.set_now_unix_ms(kNow);
  auto* s = cmd.mutable_session_create()->mutable_session();
  s->set_id(id);
  s->set_node(node);
  s->set_behavior(behavior);
  s->set_lock_delay_ms(lock_delay_ms);
  for (auto& c : checks) s->add_node_checks(c);
  return cmd;
}

pb::Command SessionDestroy(const std::string& id, int64_t now = kNow) {
  pb::Command cmd;
  cmd.set_now_unix_ms(now);
  cmd.mutable_session_destroy()->set_id(id);
  return cmd;
}

bool SameState(const StateMachine& a, const StateMachine& b) {
  return google::protobuf::util::MessageDifferencer::Equals(a.TakeSnapshot(), b.TakeSnapshot());
}

class StateMachineTest : public ::testing::Test {
 protected:
  ApplyResult Apply(const pb::Command& cmd) { return sm_.Apply(++index_, cmd); }
  void MustApply(const pb::Command& cmd) {
    ApplyResult r = Apply(cmd);
    ASSERT_TRUE(r.status.ok()) << r.status.message();
    ASSERT_TRUE(r.success);
  }
  // Applies cmd, expects it to be rejected, and checks nothing but last_applied moved.
  ApplyResult ExpectRejected(const pb::Command& cmd, Code code) {
    pb::Snapshot before = sm_.TakeSnapshot();
    ApplyResult r = Apply(cmd);
    EXPECT_EQ(r.status.code(), code) << r.status.message();
    pb::Snapshot after = sm_.TakeSnapshot();
    after.set_index(before.index());
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(before, after));
    EXPECT_THAT(r.changed, IsEmpty());
    return r;
  }

  StateMachine sm_;
  uint64_t index_ = 0;
};

TEST_F(StateMachineTest, RegisterServiceCreatesNodeServiceAndChecks) {
  ApplyResult r = Apply(RegisterService("n1", "web", "web-1", {"v1"}, {MakeCheck("c1")}));
  ASSERT_TRUE(r.status.ok());
  EXPECT_THAT(r.changed, ElementsAre(Table::kNodes, Table::kServices, Table::kChecks));
  EXPECT_THAT(r.checks_changed, ElementsAre(CheckKey{"n1", "c1"}));
  const pb::Service* svc = sm_.GetService("n1", "web-1");
  ASSERT_NE(svc, nullptr);
  EXPECT_EQ(svc->node(), "n1");
  EXPECT_EQ(svc->create_index(), 1u);
  const pb::Check* chk = sm_.GetCheck("n1", "c1");
  ASSERT_NE(chk, nullptr);
  EXPECT_EQ(chk->status(), "critical");  // new checks start critical
  EXPECT_EQ(chk->service_id(), "web-1");
  EXPECT_EQ(chk->service_name(), "web");
  EXPECT_THAT(chk->service_tags(), ElementsAre("v1"));
  EXPECT_EQ(sm_.TableIndex(Table::kServices), 1u);
  EXPECT_EQ(sm_.TableIndex(Table::kKV), 0u);
  EXPECT_EQ(sm_.MaxIndex(), 1u);
  EXPECT_EQ(sm_.NodeCount(), 1u);
}

TEST_F(StateMachineTest, ServiceIdDefaultsToNameAndCheckIdToAgentNaming) {
  MustApply(RegisterService("n1", "db", "", {}, {MakeCheck(""), MakeCheck("")}));
  ASSERT_NE(sm_.GetService("n1", "db"), nullptr);
  EXPECT_NE(sm_.GetCheck("n1", "service:db:1"), nullptr);
  EXPECT_NE(sm_.GetCheck("n1", "service:db:2"), nullptr);
}

TEST_F(StateMachineTest, ReRegistrationKeepsCreateIndexStatusAndReplacesChecks) {
  MustApply(RegisterService("n1", "web", "web-1", {"v1"}, {MakeCheck("a"), MakeCheck("b")}));
  MustApply(SetStatus("n1", "a", "passing"));
  ApplyResult r = Apply(RegisterService("n1", "web", "web-1", {"v2"}, {MakeCheck("a")}));
  ASSERT_TRUE(r.status.ok());
  const pb::Service* svc = sm_.GetService("n1", "web-1");
  EXPECT_EQ(svc->create_index(), 1u);
  EXPECT_EQ(svc->modify_index(), 3u);
  EXPECT_EQ(sm_.GetCheck("n1", "a")->status(), "passing");  // kept: command gave no status
  EXPECT_THAT(sm_.GetCheck("n1", "a")->service_tags(), ElementsAre("v2"));
  EXPECT_EQ(sm_.GetCheck("n1", "b"), nullptr);   // absent from the command: removed
  EXPECT_EQ(sm_.TableIndex(Table::kNodes), 1u);  // node unchanged: no index bump
  EXPECT_THAT(r.checks_changed, ElementsAre(CheckKey{"n1", "a"}, CheckKey{"n1", "b"}));
}

TEST_F(StateMachineTest, IdenticalReRegistrationChangesNothing) {
  MustApply(RegisterService("n1", "web", "web-1", {"v1"}, {MakeCheck("a")}));
  ApplyResult r = Apply(RegisterService("n1", "web", "web-1", {"v1"}, {MakeCheck("a")}));
  EXPECT_TRUE(r.status.ok());
  EXPECT_THAT(r.changed, IsEmpty());
  EXPECT_EQ(sm_.MaxIndex(), 1u);
  EXPECT_EQ(sm_.last_applied(), 2u);
}

TEST_F(StateMachineTest, DeregisterServiceCheckAndNode) {
  MustApply(RegisterService("n1", "web", "web-1", {}, {MakeCheck("a")}));
  MustApply(RegisterService("n1", "api", "api-1", {}, {MakeCheck("b")}));
  MustApply(RegisterNode("n1", {MakeCheck("serfHealth", "passing")}));

  ApplyResult r = Apply(Deregister("n1", "", "b"));
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(sm_.GetCheck("n1", "b"), nullptr);
  EXPECT_THAT(r.changed, ElementsAre(Table::kChecks));

  r = Apply(Deregister("n1", "web-1"));
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(sm_.GetService("n1", "web-1"), nullptr);
  EXPECT_EQ(sm_.GetCheck("n1", "a"), nullptr);
  EXPECT_EQ(sm_.ServiceCount(), 1u);

  r = Apply(Deregister("n1"));
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(sm_.NodeCount(), 0u);
  EXPECT_EQ(sm_.ServiceCount(), 0u);
  EXPECT_EQ(sm_.CheckCount(), 0u);
}

TEST_F(StateMachineTest, RejectedCommandsChangeNothing) {
  MustApply(RegisterService("n1", "web", "web-1", {}, {MakeCheck("a")}));
  ApplyResult r = ExpectRejected(Deregister("n1", "nope"), Code::kNotFound);
  EXPECT_THAT(r.status.message(), ::testing::StartsWith("Unknown service ID \"nope\""));
  r = ExpectRejected(Deregister("n1", "", "nope"), Code::kNotFound);
  EXPECT_THAT(r.status.message(), ::testing::StartsWith("Unknown check ID \"nope\""));
  ExpectRejected(SetStatus("n1", "nope", "passing"), Code::kNotFound);
  ExpectRejected(SetStatus("n1", "a", "bogus"), Code::kInvalidArgument);
  ExpectRejected(RegisterService("", "web", "w"), Code::kInvalidArgument);
  ExpectRejected(RegisterService("n2", "", "w"), Code::kInvalidArgument);
  ExpectRejected(RegisterService("n2", "web", "w", {}, {}, 70000), Code::kInvalidArgument);
  // A bad check makes the whole registration fail: no node n2 appears.
  ExpectRejected(RegisterService("n2", "web", "w", {}, {MakeCheck("x", "bogus")}),
                 Code::kInvalidArgument);
  EXPECT_EQ(sm_.GetNode("n2"), nullptr);
  ExpectRejected(KV(Op(pb::KVOp::SET, "")), Code::kInvalidArgument);
  ExpectRejected(KV(Op(pb::KVOp::SET, "k", std::string(kMaxValueBytes + 1, 'x'))), Code::kTooLarge);
  ExpectRejected(pb::Command(), Code::kInvalidArgument);
}

TEST_F(StateMachineTest, IndexMustIncrease) {
  MustApply(RegisterNode("n1"));
  ApplyResult r = sm_.Apply(1, RegisterNode("n2"));
  EXPECT_FALSE(r.status.ok());
  EXPECT_EQ(sm_.GetNode("n2"), nullptr);
}

TEST_F(StateMachineTest, CatalogQueriesWithTags) {
  MustApply(RegisterService("n2", "web", "web-b", {"v1", "eu"}));
  MustApply(RegisterService("n1", "web", "web-a", {"v1"}));
  MustApply(RegisterService("n1", "db", "db-1", {"primary"}));
  auto names = sm_.ServiceNames();
  ASSERT_EQ(names.size(), 2u);
  EXPECT_THAT(names["web"], ElementsAre("eu", "v1"));
  EXPECT_THAT(names["db"], ElementsAre("primary"));

  auto all = sm_.ServiceInstances("web");
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0]->id(), "web-a");  // sorted by (node, id)
  EXPECT_EQ(all[1]->id(), "web-b");
  auto eu = sm_.ServiceInstances("web", {"v1", "eu"});
  ASSERT_EQ(eu.size(), 1u);
  EXPECT_EQ(eu[0]->id(), "web-b");
  EXPECT_THAT(sm_.ServiceInstances("web", {"nope"}), IsEmpty());
  EXPECT_EQ(sm_.NodeServices("n1").size(), 2u);
  auto nodes = sm_.Nodes();
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0]->name(), "n1");
}

TEST_F(StateMachineTest, ChecksInStateAndByService) {
  MustApply(RegisterService("n1", "web", "web-1", {}, {MakeCheck("a", "passing")}));
  MustApply(RegisterService("n2", "web", "web-2", {}, {MakeCheck("b")}));
  MustApply(RegisterNode("n1", {MakeCheck("serfHealth", "passing")}));
  EXPECT_EQ(sm_.ChecksInState("any").size(), 3u);
  EXPECT_EQ(sm_.ChecksInState("passing").size(), 2u);
  ASSERT_EQ(sm_.ChecksInState("critical").size(), 1u);
  EXPECT_EQ(sm_.ChecksInState("critical")[0]->id(), "b");
  EXPECT_THAT(sm_.ChecksInState("bogus"), IsEmpty());
  EXPECT_EQ(sm_.ChecksOfServiceName("web").size(), 2u);
  EXPECT_EQ(sm_.NodeChecks("n1").size(), 2u);
  EXPECT_EQ(sm_.ServiceChecks("n1", "web-1").size(), 1u);

  MustApply(SetStatus("n2", "b", "passing", "ok"));
  EXPECT_THAT(sm_.ChecksInState("critical"), IsEmpty());
  EXPECT_EQ(sm_.GetCheck("n2", "b")->modify_index(), 4u);
  EXPECT_EQ(sm_.TableIndex(Table::kChecks), 4u);
  // Same status and output: success but no change.
  ApplyResult r = Apply(SetStatus("n2", "b", "passing", "ok"));
  EXPECT_TRUE(r.status.ok());
  EXPECT_THAT(r.changed, IsEmpty());
  EXPECT_EQ(sm_.TableIndex(Table::kChecks), 4u);
}

TEST_F(StateMachineTest, KVSetGetListKeys) {
  for (const char* k : {"foo/bar/baz", "foo/bar/qux", "foo/x", "fox", "zeta"}) {
    MustApply(KV(Op(pb::KVOp::SET, k, std::string("v-") + k)));
  }
  ASSERT_NE(sm_.GetKV("fox"), nullptr);
  EXPECT_EQ(sm_.GetKV("fox")->value(), "v-fox");
  EXPECT_EQ(sm_.GetKV("fox")->create_index(), 4u);
  auto list = sm_.ListKV("foo/");
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0]->key(), "foo/bar/baz");
  EXPECT_THAT(sm_.KeysKV("", "/"), ElementsAre("foo/", "fox", "zeta"));
  EXPECT_THAT(sm_.KeysKV("foo/", "/"), ElementsAre("foo/bar/", "foo/x"));
  EXPECT_THAT(sm_.KeysKV("fo", ""), ElementsAre("foo/bar/baz", "foo/bar/qux", "foo/x", "fox"));

  MustApply(KV(Op(pb::KVOp::SET, "fox", "new")));
  EXPECT_EQ(sm_.GetKV("fox")->create_index(), 4u);
  EXPECT_EQ(sm_.GetKV("fox")->modify_index(), 6u);
  EXPECT_EQ(sm_.TableIndex(Table::kKV), 6u);
}

TEST_F(StateMachineTest, CAS) {
  ApplyResult r = Apply(KV(Op(pb::KVOp::CAS, "k", "v1", 0)));
  EXPECT_TRUE(r.success);
  r = Apply(KV(Op(pb::KVOp::CAS, "k", "v2", 0)));  // 0 means "only if absent"
  EXPECT_TRUE(r.status.ok());
  EXPECT_FALSE(r.success);
  EXPECT_THAT(r.changed, IsEmpty());
  r = Apply(KV(Op(pb::KVOp::CAS, "k", "v3", 1)));
  EXPECT_TRUE(r.success);
  EXPECT_EQ(sm_.GetKV("k")->value(), "v3");
  r = Apply(KV(Op(pb::KVOp::CAS, "k", "v4", 1)));  // stale
  EXPECT_FALSE(r.success);
  EXPECT_EQ(sm_.GetKV("k")->value(), "v3");
  r = Apply(KV(Op(pb::KVOp::DELETE_CAS, "k", "", 1)));
  EXPECT_FALSE(r.success);
  r = Apply(KV(Op(pb::KVOp::DELETE_CAS, "k", "", 3)));
  EXPECT_TRUE(r.success);
  EXPECT_EQ(sm_.GetKV("k"), nullptr);
  r = Apply(KV(Op(pb::KVOp::DELETE_CAS, "k", "", 3)));
  EXPECT_FALSE(r.success);
}

TEST_F(StateMachineTest, DeleteTreeTombstonesAndQueryIndex) {
  MustApply(KV(Op(pb::KVOp::SET, "a/1", "x")));
  MustApply(KV(Op(pb::KVOp::SET, "a/2", "x")));
  MustApply(KV(Op(pb::KVOp::SET, "b", "x")));
  EXPECT_EQ(sm_.KVQueryIndex("a/", true), 2u);
  EXPECT_EQ(sm_.KVQueryIndex("a/1", false), 1u);
  EXPECT_EQ(sm_.KVQueryIndex("nothing", false), 3u);  // none: the KV table index

  ApplyResult r = Apply(KV(Op(pb::KVOp::DELETE, "a/1")));
  EXPECT_THAT(r.kv_keys_changed, ElementsAre("a/1"));
  EXPECT_EQ(sm_.KVQueryIndex("a/", true), 4u);  // the tombstone moves the prefix's index
  EXPECT_EQ(sm_.KVQueryIndex("a/1", false), 4u);
  EXPECT_EQ(sm_.KVQueryIndex("b", false), 3u);

  r = Apply(KV(Op(pb::KVOp::DELETE, "absent")));
  EXPECT_TRUE(r.success);
  EXPECT_THAT(r.changed, IsEmpty());

  MustApply(KV(Op(pb::KVOp::SET, "a/3", "x")));
  r = Apply(KV(Op(pb::KVOp::DELETE_TREE, "a/")));
  EXPECT_THAT(r.kv_keys_changed, ElementsAre("a/2", "a/3"));
  EXPECT_THAT(sm_.ListKV("a/"), IsEmpty());
  EXPECT_EQ(sm_.KVCount(), 1u);
  EXPECT_EQ(sm_.KVQueryIndex("a/", true), 7u);
  EXPECT_EQ(sm_.TakeSnapshot().kv_tombstones().size(), 3u);
}

class SessionTest : public StateMachineTest {
 protected:
  void SetUp() override {
    MustApply(RegisterNode("n1", {MakeCheck("serfHealth", "passing")}));
    MustApply(SessionCreate("s1", "n1", {"serfHealth"}));
    MustApply(SessionCreate("s2", "n1"));
  }
};

TEST_F(SessionTest, LockUnlockWithTwoSessions) {
  ApplyResult r = Apply(KV(Op(pb::KVOp::LOCK, "lock", "me", 0, "s1")));
  EXPECT_TRUE(r.success);
  EXPECT_EQ(sm_.GetKV("lock")->session(), "s1");
  EXPECT_EQ(sm_.GetKV("lock")->lock_index(), 1u);
  r = Apply(KV(Op(pb::KVOp::LOCK, "lock", "other", 0, "s2")));
  EXPECT_FALSE(r.success);
  EXPECT_EQ(sm_.GetKV("lock")->value(), "me");
  r = Apply(KV(Op(pb::KVOp::LOCK, "lock", "again", 0, "s1")));  // re-acquire: no LockIndex bump
  EXPECT_TRUE(r.success);
  EXPECT_EQ(sm_.GetKV("lock")->lock_index(), 1u);
  EXPECT_EQ(sm_.GetKV("lock")->value(), "again");
  r = Apply(KV(Op(pb::KVOp::UNLOCK, "lock", "", 0, "s2")));
  EXPECT_FALSE(r.success);
  r = Apply(KV(Op(pb::KVOp::UNLOCK, "lock", "free", 0, "s1")));
  EXPECT_TRUE(r.success);
  EXPECT_EQ(sm_.GetKV("lock")->session(), "");
  r = Apply(KV(Op(pb::KVOp::LOCK, "lock", "mine", 0, "s2")));
  EXPECT_TRUE(r.success);
  EXPECT_EQ(sm_.GetKV("lock")->lock_index(), 2u);
  r = Apply(KV(Op(pb::KVOp::LOCK, "lock", "x", 0, "ghost")));
  EXPECT_EQ(r.status.code(), Code::kInvalidArgument);
  EXPECT_EQ(r.status.message(), "invalid session \"ghost\"");
}

TEST_F(SessionTest, DestroyReleasesLocksAndLockDelayBlocksUntilItPasses) {
  MustApply(KV(Op(pb::KVOp::LOCK, "lock", "me", 0, "s1")));
  ApplyResult r = Apply(SessionDestroy("s1", kNow + 100));
  EXPECT_TRUE(r.success);
  EXPECT_THAT(r.sessions_changed, ElementsAre("s1"));
  EXPECT_THAT(r.kv_keys_changed, ElementsAre("lock"));
  EXPECT_EQ(sm_.GetSession("s1"), nullptr);
  EXPECT_EQ(sm_.GetKV("lock")->session(), "");
  EXPECT_EQ(sm_.GetKV("lock")->modify_index(), index_);
  EXPECT_EQ(sm_.LockDelayUntilUnixMs("lock"), kNow + 100 + 15'000);

  r = Apply(KV(Op(pb::KVOp::LOCK, "lock", "x", 0, "s2"), kNow + 15'099));
  EXPECT_TRUE(r.status.ok());
  EXPECT_FALSE(r.success);
  r = Apply(KV(Op(pb::KVOp::LOCK, "lock", "x", 0, "s2"), kNow + 15'100));
  EXPECT_TRUE(r.success);
  EXPECT_EQ(sm_.GetKV("lock")->session(), "s2");

  r = Apply(SessionDestroy("unknown"));  // Consul answers true
  EXPECT_TRUE(r.status.ok());
  EXPECT_TRUE(r.success);
}

TEST_F(SessionTest, BehaviorDeleteDeletesHeldKeys) {
  MustApply(SessionCreate("s3", "n1", {}, "delete", 0));
  MustApply(KV(Op(pb::KVOp::LOCK, "held", "v", 0, "s3")));
  MustApply(SessionDestroy("s3"));
  EXPECT_EQ(sm_.GetKV("held"), nullptr);
  EXPECT_EQ(sm_.KVQueryIndex("held", false), index_);
  EXPECT_EQ(sm_.LockDelayUntilUnixMs("held"), 0);
}

TEST_F(SessionTest, NodeCheckCriticalOrNodeRemovalInvalidatesSessions) {
  MustApply(KV(Op(pb::KVOp::LOCK, "lock", "me", 0, "s1")));
  ApplyResult r = Apply(SetStatus("n1", "serfHealth", "critical"));
  EXPECT_THAT(r.sessions_changed, ElementsAre("s1"));
  EXPECT_EQ(sm_.GetSession("s1"), nullptr);
  EXPECT_NE(sm_.GetSession("s2"), nullptr);  // not bound to the check
  EXPECT_EQ(sm_.GetKV("lock")->session(), "");
  EXPECT_EQ(sm_.TableIndex(Table::kSessions), index_);

  ExpectRejected(SessionCreate("s4", "n1", {"serfHealth"}), Code::kInvalidArgument);
  ExpectRejected(SessionCreate("s4", "n9"), Code::kInvalidArgument);
  ExpectRejected(SessionCreate("s2", "n1"), Code::kInvalidArgument);
  ExpectRejected(SessionCreate("", "n1"), Code::kInvalidArgument);

  MustApply(Deregister("n1"));
  EXPECT_THAT(sm_.Sessions(), IsEmpty());
}

TEST_F(SessionTest, SessionQueries) {
  auto all = sm_.Sessions();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0]->id(), "s1");
  EXPECT_EQ(sm_.NodeSessions("n1").size(), 2u);
  EXPECT_THAT(sm_.NodeSessions("n2"), IsEmpty());
}

TEST_F(SessionTest, TxnIsAllOrNothing) {
  MustApply(KV(Op(pb::KVOp::SET, "a", "old")));
  uint64_t a_index = index_;
  pb::Command txn;
  txn.set_now_unix_ms(kNow);
  *txn.mutable_txn()->add_ops() = Op(pb::KVOp::SET, "a", "new");
  *txn.mutable_txn()->add_ops() = Op(pb::KVOp::DELETE, "a");
  *txn.mutable_txn()->add_ops() = Op(pb::KVOp::SET, "b", "new");
  *txn.mutable_txn()->add_ops() = Op(pb::KVOp::CAS, "c", "x", 99);  // fails
  pb::Snapshot before = sm_.TakeSnapshot();
  ApplyResult r = Apply(txn);
  EXPECT_TRUE(r.status.ok());
  EXPECT_FALSE(r.success);
  EXPECT_THAT(r.changed, IsEmpty());
  pb::Snapshot after = sm_.TakeSnapshot();
  after.set_index(before.index());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(before, after));
  EXPECT_EQ(sm_.GetKV("a")->value(), "old");

  // An invalid session inside a txn rejects it too.
  txn.mutable_txn()->mutable_ops(3)->CopyFrom(Op(pb::KVOp::LOCK, "c", "x", 0, "ghost"));
  r = Apply(txn);
  EXPECT_FALSE(r.success);
  EXPECT_EQ(sm_.GetKV("b"), nullptr);

  txn.mutable_txn()->mutable_ops(3)->CopyFrom(Op(pb::KVOp::LOCK, "c", "x", 0, "s1"));
  r = Apply(txn);
  EXPECT_TRUE(r.success);
  EXPECT_EQ(sm_.GetKV("a"), nullptr);
  EXPECT_EQ(sm_.GetKV("b")->modify_index(), index_);
  EXPECT_EQ(sm_.GetKV("c")->session(), "s1");
  EXPECT_GT(index_, a_index);
  EXPECT_THAT(r.kv_keys_changed, ElementsAre("a", "b", "c"));
}

TEST_F(SessionTest, SnapshotRoundTrip) {
  MustApply(RegisterService("n1", "web", "web-1", {"v1"}, {MakeCheck("a", "passing")}));
  MustApply(KV(Op(pb::KVOp::LOCK, "lock", "me", 0, "s1")));
  MustApply(KV(Op(pb::KVOp::SET, "gone", "x")));
  MustApply(KV(Op(pb::KVOp::DELETE, "gone")));
  MustApply(SessionDestroy("s1"));  // leaves a lock delay
  StateMachine restored;
  restored.Restore(sm_.TakeSnapshot());
  EXPECT_TRUE(SameState(sm_, restored));
  EXPECT_EQ(restored.last_applied(), sm_.last_applied());
  EXPECT_EQ(restored.TableIndex(Table::kKV), sm_.TableIndex(Table::kKV));
  EXPECT_EQ(restored.LockDelayUntilUnixMs("lock"), kNow + 15'000);
  EXPECT_EQ(restored.KVQueryIndex("gone", false), sm_.KVQueryIndex("gone", false));
  EXPECT_EQ(restored.ServiceInstances("web").size(), 1u);  // secondary indexes rebuilt

  // Both continue identically.
  pb::Command cmd = KV(Op(pb::KVOp::LOCK, "x", "v", 0, "s2"));
  ++index_;
  ASSERT_TRUE(sm_.Apply(index_, cmd).success);
  ASSERT_TRUE(restored.Apply(index_, cmd).success);
  EXPECT_TRUE(SameState(sm_, restored));
  MustApply(SetStatus("n1", "a", "critical"));
  EXPECT_FALSE(SameState(sm_, restored));
}

}  // namespace
}  // namespace haven::registry

namespace haven::registry {
namespace {

TEST_F(StateMachineTest, ServiceNameIndexMovesOnlyForThatService) {
  MustApply(RegisterService("n1", "web", "web-1", {}, {MakeCheck("c1")}));
  MustApply(RegisterService("n1", "db", "db-1"));
  uint64_t web = sm_.ServiceNameIndex("web");
  EXPECT_EQ(web, 1u);
  EXPECT_EQ(sm_.ServiceNameIndex("db"), 2u);
  EXPECT_EQ(sm_.ServiceNameIndex("never"), 0u);

  MustApply(RegisterService("n2", "other", "o-1"));  // another service: web does not move
  EXPECT_EQ(sm_.ServiceNameIndex("web"), web);

  MustApply(SetStatus("n1", "c1", "passing"));  // its own check moves it
  EXPECT_EQ(sm_.ServiceNameIndex("web"), index_);
  EXPECT_EQ(sm_.ServiceNameIndex("db"), 2u);

  MustApply(
      RegisterNode("n1", {MakeCheck("node-check")}));  // a node check moves every service on n1
  EXPECT_EQ(sm_.ServiceNameIndex("web"), index_);
  EXPECT_EQ(sm_.ServiceNameIndex("db"), index_);
  EXPECT_LT(sm_.ServiceNameIndex("other"), index_);

  MustApply(Deregister("n1", "web-1"));  // removal moves it, and the index stays afterwards
  EXPECT_EQ(sm_.ServiceNameIndex("web"), index_);

  StateMachine restored;
  restored.Restore(sm_.TakeSnapshot());
  EXPECT_EQ(restored.ServiceNameIndex("web"), index_);
  EXPECT_EQ(restored.ServiceNameIndex("other"), sm_.ServiceNameIndex("other"));
}

}  // namespace
}  // namespace haven::registry

namespace haven::registry {
namespace {

pb::Command Reap(uint64_t up_to) {
  pb::Command cmd;
  cmd.set_now_unix_ms(kNow);
  cmd.mutable_reap_tombstones()->set_up_to_index(up_to);
  return cmd;
}

TEST_F(StateMachineTest, ReapingTombstonesNeverMovesAQueryIndexBack) {
  MustApply(KV(Op(pb::KVOp::SET, "app/a", "1")));
  MustApply(KV(Op(pb::KVOp::SET, "app/b", "2")));
  MustApply(KV(Op(pb::KVOp::DELETE, "app/a")));  // tombstone at 3
  uint64_t deleted_at = index_;
  MustApply(KV(Op(pb::KVOp::SET, "other", "x")));
  MustApply(KV(Op(pb::KVOp::DELETE, "other")));  // tombstone at 5
  EXPECT_EQ(sm_.TombstoneCount(), 2u);
  uint64_t before = sm_.KVQueryIndex("app/", true);
  EXPECT_EQ(before, deleted_at);

  MustApply(Reap(deleted_at));  // reaps app/a only
  EXPECT_EQ(sm_.TombstoneCount(), 1u);
  EXPECT_GE(sm_.KVQueryIndex("app/", true), before) << "the index must not go back";
  EXPECT_GE(sm_.KVQueryIndex("app/a", false), before);

  MustApply(Reap(index_));
  EXPECT_EQ(sm_.TombstoneCount(), 0u);
  StateMachine restored;
  restored.Restore(sm_.TakeSnapshot());
  EXPECT_EQ(restored.KVQueryIndex("app/", true), sm_.KVQueryIndex("app/", true));
  EXPECT_EQ(restored.TombstoneCount(), 0u);
}

}  // namespace
}  // namespace haven::registry
