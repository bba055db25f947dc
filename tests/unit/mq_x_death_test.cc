// x-death and broker-set headers on raw AMQP properties: RabbitMQ's shape, counts and order, other
// properties and headers untouched byte for byte, malformed input refused without a crash.
#include "mq/x_death.h"

#include <gtest/gtest.h>

#include <string>

#include "mq/amqp_codec.h"

namespace haven::mq {
namespace {

using amqp::BasicProperties;
using amqp::FieldArray;
using amqp::FieldTable;
using amqp::FieldValue;

DeathEvent Death(std::string queue, std::string reason, uint64_t time = 1'700'000'000) {
  return DeathEvent{std::move(queue), std::move(reason), "ex", {"rk"}, time};
}

BasicProperties Decode(const std::string& raw) {
  auto p = amqp::DecodeProperties(raw);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? *p : BasicProperties{};
}

std::string MustAddDeath(const std::string& raw, const DeathEvent& d) {
  auto out = AddDeath(raw, d);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? *out : raw;
}

const FieldArray& XDeath(const BasicProperties& p) {
  static const FieldArray kEmpty;
  if (!p.headers) return kEmpty;
  const FieldValue* v = p.headers->Find("x-death");
  const auto* a = v ? v->get_if<FieldArray>() : nullptr;
  return a ? *a : kEmpty;
}

const FieldTable& Entry(const FieldArray& a, size_t i) {
  static const FieldTable kEmpty;
  if (i >= a.items.size()) return kEmpty;
  const auto* t = a.items[i].get_if<FieldTable>();
  return t ? *t : kEmpty;
}

std::string Str(const FieldTable& t, std::string_view key) {
  const FieldValue* v = t.Find(key);
  auto s = v ? v->AsString() : std::nullopt;
  return s ? std::string(*s) : "<none>";
}

int64_t Count(const FieldTable& t) {
  const FieldValue* v = t.Find("count");
  return v && v->get_if<int64_t>() ? *v->get_if<int64_t>() : -1;
}

std::string Header(const BasicProperties& p, std::string_view name) {
  if (!p.headers) return "<no headers>";
  return Str(*p.headers, name);
}

std::string PlainProperties() {
  BasicProperties p;
  p.content_type = "text/plain";
  p.delivery_mode = 2;
  p.message_id = "m-1";
  return amqp::EncodeProperties(p);
}

TEST(XDeathTest, FirstDeathAddsRabbitMqsEntryAndHeaders) {
  BasicProperties out = Decode(MustAddDeath(PlainProperties(), Death("work", "rejected")));
  EXPECT_EQ(out.content_type, "text/plain");
  EXPECT_EQ(out.delivery_mode, 2);
  EXPECT_EQ(out.message_id, "m-1");
  const FieldArray& xd = XDeath(out);
  ASSERT_EQ(xd.items.size(), 1u);
  const FieldTable& e = Entry(xd, 0);
  // RabbitMQ's keys, types and (sorted) order.
  ASSERT_EQ(e.entries.size(), 6u);
  EXPECT_EQ(e.entries[0].name, "count");
  EXPECT_EQ(e.entries[0].value, FieldValue(int64_t{1}));
  EXPECT_EQ(e.entries[1].name, "exchange");
  EXPECT_EQ(e.entries[1].value, FieldValue(std::string("ex")));
  EXPECT_EQ(e.entries[2].name, "queue");
  EXPECT_EQ(e.entries[2].value, FieldValue(std::string("work")));
  EXPECT_EQ(e.entries[3].name, "reason");
  EXPECT_EQ(e.entries[3].value, FieldValue(std::string("rejected")));
  EXPECT_EQ(e.entries[4].name, "routing-keys");
  EXPECT_EQ(e.entries[4].value, FieldValue(FieldArray({FieldValue(std::string("rk"))})));
  EXPECT_EQ(e.entries[5].name, "time");
  EXPECT_EQ(e.entries[5].value, FieldValue(amqp::Timestamp{1'700'000'000}));
  EXPECT_EQ(Header(out, "x-first-death-queue"), "work");
  EXPECT_EQ(Header(out, "x-first-death-reason"), "rejected");
  EXPECT_EQ(Header(out, "x-first-death-exchange"), "ex");
  EXPECT_EQ(Header(out, "x-last-death-queue"), "work");
  EXPECT_EQ(Header(out, "x-last-death-reason"), "rejected");
  EXPECT_EQ(Header(out, "x-last-death-exchange"), "ex");
}

TEST(XDeathTest, SameQueueAndReasonIncrementsTheCountAndMovesTheEntryFirst) {
  std::string raw = MustAddDeath(PlainProperties(), Death("a", "rejected", 100));
  raw = MustAddDeath(raw, Death("b", "expired", 200));
  BasicProperties mid = Decode(raw);
  ASSERT_EQ(XDeath(mid).items.size(), 2u);
  EXPECT_EQ(Str(Entry(XDeath(mid), 0), "queue"), "b");  // new entries are prepended
  raw = MustAddDeath(raw, Death("a", "rejected", 300));
  BasicProperties out = Decode(raw);
  const FieldArray& xd = XDeath(out);
  ASSERT_EQ(xd.items.size(), 2u);
  EXPECT_EQ(Str(Entry(xd, 0), "queue"), "a");
  EXPECT_EQ(Count(Entry(xd, 0)), 2);
  // The entry keeps its first time, as RabbitMQ's does.
  EXPECT_EQ(*Entry(xd, 0).Find("time"), FieldValue(amqp::Timestamp{100}));
  EXPECT_EQ(Str(Entry(xd, 1), "queue"), "b");
  EXPECT_EQ(Count(Entry(xd, 1)), 1);
  // First death set once, last death follows.
  EXPECT_EQ(Header(out, "x-first-death-queue"), "a");
  EXPECT_EQ(Header(out, "x-first-death-reason"), "rejected");
  EXPECT_EQ(Header(out, "x-last-death-queue"), "a");
  raw = MustAddDeath(raw, Death("b", "expired", 400));
  out = Decode(raw);
  EXPECT_EQ(Str(Entry(XDeath(out), 0), "queue"), "b");
  EXPECT_EQ(Count(Entry(XDeath(out), 0)), 2);
  EXPECT_EQ(Header(out, "x-first-death-queue"), "a");
  EXPECT_EQ(Header(out, "x-last-death-queue"), "b");
  EXPECT_EQ(Header(out, "x-last-death-reason"), "expired");
}

TEST(XDeathTest, SameQueueOtherReasonIsAnotherEntry) {
  std::string raw = MustAddDeath(PlainProperties(), Death("q", "rejected"));
  raw = MustAddDeath(raw, Death("q", "delivery_limit"));
  BasicProperties props = Decode(raw);
  const FieldArray& xd = XDeath(props);
  ASSERT_EQ(xd.items.size(), 2u);
  EXPECT_EQ(Str(Entry(xd, 0), "reason"), "delivery_limit");
  EXPECT_EQ(Count(Entry(xd, 0)), 1);
  EXPECT_EQ(Count(Entry(xd, 1)), 1);
}

TEST(XDeathTest, ExpirationIsRemovedAndKeptAsOriginalExpiration) {
  BasicProperties p;
  p.correlation_id = "c";
  p.expiration = "5000";
  p.message_id = "m";
  p.app_id = "app";
  BasicProperties out = Decode(MustAddDeath(amqp::EncodeProperties(p), Death("q", "expired")));
  EXPECT_FALSE(out.expiration.has_value());
  EXPECT_EQ(out.correlation_id, "c");
  EXPECT_EQ(out.message_id, "m");
  EXPECT_EQ(out.app_id, "app");
  EXPECT_EQ(Str(Entry(XDeath(out), 0), "original-expiration"), "5000");
}

// Builds properties by hand: content-type, a headers table whose bytes the codec would not
// reproduce ('U' and 'L' types, a duplicate name), then priority and timestamp.
struct HandMade {
  std::string before = std::string("\x0a", 1) + "text/plain";
  std::string table;
  std::string after = std::string("\x07", 1) + std::string("\x00\x00\x00\x00\x65\x53\xf1\x00", 8);
  std::string raw;
  HandMade() {
    table += std::string("\x01", 1) + "a" + std::string("U\xff\xfe", 3);
    table += std::string("\x01", 1) + "b" + std::string("L\x00\x00\x00\x00\x00\x00\x00\x2a", 9);
    table += std::string("\x01", 1) + "a" + std::string("S\x00\x00\x00\x03", 5) + "dup";
    uint16_t flags = (1u << 15) | (1u << 13) | (1u << 11) | (1u << 6);
    raw.push_back(static_cast<char>(flags >> 8));
    raw.push_back(static_cast<char>(flags & 0xff));
    raw += before;
    std::string len(4, '\0');
    len[3] = static_cast<char>(table.size());
    raw += len + table + after;
  }
};

TEST(XDeathTest, OtherPropertiesAndHeadersStayByteForByte) {
  HandMade h;
  ASSERT_TRUE(amqp::DecodeProperties(h.raw).ok());
  auto out = AddDeath(h.raw, Death("q", "maxlen"));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  // flags, content-type, table size, then the old entries unchanged and in order, then new ones.
  EXPECT_EQ(out->substr(0, 2), h.raw.substr(0, 2));
  EXPECT_EQ(out->substr(2, h.before.size()), h.before);
  EXPECT_EQ(out->substr(2 + h.before.size() + 4, h.table.size()), h.table);
  EXPECT_TRUE(out->ends_with(h.after));
  BasicProperties p = Decode(*out);
  EXPECT_EQ(p.priority, 7);
  EXPECT_EQ(p.timestamp, 0x6553f100u);
  ASSERT_TRUE(p.headers.has_value());
  EXPECT_EQ(p.headers->entries[0].name, "a");
  EXPECT_EQ(p.headers->entries[1].name, "b");
  EXPECT_EQ(p.headers->entries[2].name, "a");
  EXPECT_EQ(p.headers->entries[3].name, "x-death");

  auto counted = WithHeader(h.raw, "x-delivery-count", int64_t{3});
  ASSERT_TRUE(counted.ok());
  EXPECT_EQ(counted->substr(2 + h.before.size() + 4, h.table.size()), h.table);
  EXPECT_TRUE(counted->ends_with(h.after));
  EXPECT_EQ(counted->size(), h.raw.size() + 1 + 16 + 9);  // name length, name, 'l' + 8 bytes
}

TEST(XDeathTest, WithHeaderAddsATableOrReplacesInPlace) {
  BasicProperties p;
  p.delivery_mode = 2;
  auto once = WithHeader(amqp::EncodeProperties(p), "x-delivery-count", int64_t{1});
  ASSERT_TRUE(once.ok());
  BasicProperties got = Decode(*once);
  EXPECT_EQ(got.delivery_mode, 2);
  ASSERT_TRUE(got.headers.has_value());
  EXPECT_EQ(*got.headers->Find("x-delivery-count"), FieldValue(int64_t{1}));

  p.headers.emplace();
  p.headers->Set("first", "1");
  p.headers->Set("x-delivery-count", int64_t{1});
  p.headers->Set("last", "2");
  auto twice = WithHeader(amqp::EncodeProperties(p), "x-delivery-count", int64_t{2});
  ASSERT_TRUE(twice.ok());
  got = Decode(*twice);
  ASSERT_EQ(got.headers->entries.size(), 3u);
  EXPECT_EQ(got.headers->entries[1].name, "x-delivery-count");
  EXPECT_EQ(got.headers->entries[1].value, FieldValue(int64_t{2}));
  EXPECT_EQ(got.headers->entries[2].name, "last");
}

TEST(XDeathTest, AnXDeathThatIsNotAnArrayIsReplaced) {
  BasicProperties p;
  p.headers.emplace();
  p.headers->Set("x-death", "a string a client put there");
  p.headers->Set("other", int32_t{5});
  BasicProperties out = Decode(MustAddDeath(amqp::EncodeProperties(p), Death("q", "rejected")));
  ASSERT_EQ(XDeath(out).items.size(), 1u);
  EXPECT_EQ(Count(Entry(XDeath(out), 0)), 1);
  EXPECT_EQ(out.headers->entries[0].name, "x-death");  // replaced where it was
  EXPECT_EQ(*out.headers->Find("other"), FieldValue(int32_t{5}));
}

TEST(XDeathTest, ItemsThatAreNotTablesAreKeptBehindTheNewEntry) {
  BasicProperties p;
  p.headers.emplace();
  p.headers->Set("x-death", FieldArray({FieldValue("junk"), FieldValue(int8_t{1})}));
  BasicProperties out = Decode(MustAddDeath(amqp::EncodeProperties(p), Death("q", "rejected")));
  const FieldArray& xd = XDeath(out);
  ASSERT_EQ(xd.items.size(), 3u);
  EXPECT_EQ(Str(Entry(xd, 0), "queue"), "q");
  EXPECT_EQ(xd.items[1], FieldValue("junk"));
}

TEST(XDeathTest, TheArrayIsBoundedKeepingTheMostRecentEntries) {
  std::string raw = PlainProperties();
  for (int i = 0; i < 150; ++i) raw = MustAddDeath(raw, Death("q" + std::to_string(i), "maxlen"));
  BasicProperties props = Decode(raw);
  const FieldArray& xd = XDeath(props);
  ASSERT_EQ(xd.items.size(), kMaxXDeathEntries);
  EXPECT_EQ(Str(Entry(xd, 0), "queue"), "q149");
  EXPECT_EQ(Str(Entry(xd, 99), "queue"), "q50");

  // Long names: the byte bound cuts first.
  raw = PlainProperties();
  for (int i = 0; i < 100; ++i) {
    std::string name(250, 'n');
    name += std::to_string(i);
    raw = MustAddDeath(
        raw, DeathEvent{name, "rejected", std::string(255, 'e'), {std::string(255, 'k')}, 1});
  }
  BasicProperties out = Decode(raw);
  size_t entries = XDeath(out).items.size();
  EXPECT_LT(entries, 100u);
  EXPECT_GT(entries, 10u);
  EXPECT_LT(raw.size(), kMaxXDeathBytes + 2'000);
}

TEST(XDeathTest, MalformedPropertiesAreAnErrorNotACrash) {
  const std::string good = MustAddDeath(PlainProperties(), Death("q", "rejected"));
  EXPECT_FALSE(AddDeath("", Death("q", "rejected")).ok());
  EXPECT_FALSE(AddDeath(std::string("\x00\x01", 2), Death("q", "rejected")).ok());  // flag bit 0
  EXPECT_FALSE(AddDeath(good + "x", Death("q", "rejected")).ok());                  // trailing
  EXPECT_FALSE(WithHeader(good + "x", "h", int64_t{1}).ok());
  // An unknown field type inside the headers table.
  std::string bad_type = std::string("\x20\x00", 2) + std::string("\x00\x00\x00\x03", 4) +
                         std::string("\x01", 1) + "h" + "?";
  EXPECT_FALSE(AddDeath(bad_type, Death("q", "rejected")).ok());
  // Every truncation and every single-byte corruption either fails cleanly or still parses.
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(AddDeath(good.substr(0, n), Death("q", "rejected")).ok()) << n;
    std::string flipped = good;
    flipped[n] = static_cast<char>(flipped[n] ^ 0x5a);
    auto r = AddDeath(flipped, Death("q", "rejected"));
    // What comes out is always properties we can edit again.
    if (r.ok()) {
      EXPECT_TRUE(AddDeath(*r, Death("q2", "expired")).ok()) << n;
    }
  }
}

TEST(XDeathTest, ReasonNamesAreRabbitMqs) {
  EXPECT_EQ(DeathReasonName(pb::DEAD_LETTER_REJECTED), "rejected");
  EXPECT_EQ(DeathReasonName(pb::DEAD_LETTER_EXPIRED), "expired");
  EXPECT_EQ(DeathReasonName(pb::DEAD_LETTER_MAXLEN), "maxlen");
  EXPECT_EQ(DeathReasonName(pb::DEAD_LETTER_DELIVERY_LIMIT), "delivery_limit");
}

}  // namespace
}  // namespace haven::mq
