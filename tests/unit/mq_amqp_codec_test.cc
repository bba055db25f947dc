// Tests for the AMQP 0-9-1 codec: byte-exact frames built by hand from the spec, round trips of
// every method, incremental frame decoding, truncation and random input.
#include "mq/amqp_codec.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

namespace haven::mq::amqp {
namespace {

using namespace std::string_literals;

// Big-endian helpers for building expected bytes by hand.
std::string U16(uint16_t v) { return {static_cast<char>(v >> 8), static_cast<char>(v & 0xFF)}; }
std::string U32(uint32_t v) { return U16(static_cast<uint16_t>(v >> 16)) + U16(v & 0xFFFF); }
std::string U64(uint64_t v) { return U32(static_cast<uint32_t>(v >> 32)) + U32(v & 0xFFFFFFFF); }
std::string Short(std::string_view s) {
  return std::string(1, static_cast<char>(s.size())) + std::string(s);
}
std::string Long(std::string_view s) {
  return U32(static_cast<uint32_t>(s.size())) + std::string(s);
}

uint16_t CodeOf(const Status& s) { return ToAmqpError(s).code; }

// A table using every field type, with nesting.
FieldTable EveryTypeTable() {
  FieldTable inner;
  inner.Set("deep", FieldValue(int32_t{-7}));
  FieldArray arr;
  arr.items = {FieldValue(true), FieldValue("in array"), FieldValue(inner),
               FieldValue(FieldArray({FieldValue(int64_t{1}), FieldValue(Void{})}))};
  FieldTable t;
  t.Set("bool", FieldValue(true));
  t.Set("i8", FieldValue(int8_t{-5}));
  t.Set("u8", FieldValue(uint8_t{250}));
  t.Set("i16", FieldValue(int16_t{-300}));
  t.Set("u16", FieldValue(uint16_t{65000}));
  t.Set("i32", FieldValue(int32_t{-70000}));
  t.Set("u32", FieldValue(uint32_t{4000000000u}));
  t.Set("i64", FieldValue(int64_t{-5000000000LL}));
  t.Set("float", FieldValue(1.5f));
  t.Set("double", FieldValue(-2.25));
  t.Set("decimal", FieldValue(Decimal{2, 12345}));
  t.Set("longstr", FieldValue("hello\0world"s));
  t.Set("bytes", FieldValue(ByteArray{"\x00\x01\xff"s}));
  t.Set("array", FieldValue(arr));
  t.Set("ts", FieldValue(Timestamp{1700000000}));
  t.Set("table", FieldValue(inner));
  t.Set("void", FieldValue(Void{}));
  return t;
}

BasicProperties AllProperties() {
  BasicProperties p;
  p.content_type = "application/json";
  p.content_encoding = "gzip";
  p.headers = EveryTypeTable();
  p.delivery_mode = 2;
  p.priority = 5;
  p.correlation_id = "corr-1";
  p.reply_to = "amq.rabbitmq.reply-to";
  p.expiration = "60000";
  p.message_id = "msg-42";
  p.timestamp = 1700000001;
  p.type = "order.created";
  p.user_id = "guest";
  p.app_id = "shop";
  p.cluster_id = "c1";
  return p;
}

// One instance of every method, with non-default values where there are fields.
std::vector<Method> EveryMethod() {
  FieldTable args;
  args.Set("x-queue-type", FieldValue("quorum"));
  args.Set("x-message-ttl", FieldValue(int32_t{60000}));
  FieldTable caps;
  caps.Set("publisher_confirms", FieldValue(true));
  FieldTable props;
  props.Set("product", FieldValue("haven"));
  props.Set("capabilities", FieldValue(caps));
  return {
      ConnectionStart{0, 9, props, "PLAIN AMQPLAIN", "en_US"},
      ConnectionStartOk{props, "PLAIN", "\0guest\0guest"s, "en_US"},
      ConnectionSecure{"challenge"},
      ConnectionSecureOk{"answer"},
      ConnectionTune{2047, 131072, 60},
      ConnectionTuneOk{2047, 131072, 60},
      ConnectionOpen{"/", "caps", true},
      ConnectionOpenOk{"known"},
      ConnectionClose{320, "CONNECTION_FORCED - shutdown", 0, 0},
      ConnectionCloseOk{},
      ConnectionBlocked{"low on memory"},
      ConnectionUnblocked{},
      ChannelOpen{"oob"},
      ChannelOpenOk{"chan-id"},
      ChannelFlow{false},
      ChannelFlowOk{false},
      ChannelClose{404, "NOT_FOUND - no queue 'q'", 50, 10},
      ChannelCloseOk{},
      ExchangeDeclare{1, "logs", "topic", true, true, false, true, true, args},
      ExchangeDeclareOk{},
      ExchangeDelete{2, "logs", true, true},
      ExchangeDeleteOk{},
      ExchangeBind{3, "dst", "src", "a.*.b", true, args},
      ExchangeBindOk{},
      ExchangeUnbind{4, "dst", "src", "a.#", true, args},
      ExchangeUnbindOk{},
      QueueDeclare{5, "orders", false, true, true, false, true, args},
      QueueDeclareOk{"orders", 10, 2},
      QueueBind{6, "orders", "amq.topic", "order.*", true, args},
      QueueBindOk{},
      QueuePurge{7, "orders", true},
      QueuePurgeOk{99},
      QueueDelete{8, "orders", true, false, true},
      QueueDeleteOk{3},
      QueueUnbind{9, "orders", "amq.topic", "order.*", args},
      QueueUnbindOk{},
      BasicQos{0, 100, true},
      BasicQosOk{},
      BasicConsume{10, "orders", "ctag-1", true, false, true, true, args},
      BasicConsumeOk{"ctag-1"},
      BasicCancel{"ctag-1", true},
      BasicCancelOk{"ctag-1"},
      BasicPublish{11, "amq.direct", "orders", true, true},
      BasicReturn{312, "NO_ROUTE", "amq.direct", "nowhere"},
      BasicDeliver{"ctag-1", 1ull << 40, true, "amq.direct", "orders"},
      BasicGet{12, "orders", true},
      BasicGetOk{77, true, "ex", "rk", 5},
      BasicGetEmpty{"cluster"},
      BasicAck{123456789012ull, true},
      BasicReject{5, false},
      BasicRecoverAsync{true},
      BasicRecover{true},
      BasicRecoverOk{},
      BasicNack{9, true, false},
      ConfirmSelect{true},
      ConfirmSelectOk{},
      TxSelect{},
      TxSelectOk{},
      TxCommit{},
      TxCommitOk{},
      TxRollback{},
      TxRollbackOk{},
  };
}

// ---- Protocol header ----------------------------------------------------------------------------
TEST(AmqpProtocolHeader, AcceptsOnly091) {
  auto ok = ParseProtocolHeader("AMQP\x00\x00\x09\x01"s);
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(*ok);
  auto old = ParseProtocolHeader("AMQP\x01\x01\x00\x09"s);
  ASSERT_TRUE(old.ok());
  EXPECT_FALSE(*old);
  auto http = ParseProtocolHeader("GET / HT");
  ASSERT_TRUE(http.ok());
  EXPECT_FALSE(*http);
  EXPECT_FALSE(ParseProtocolHeader("AMQP").ok());
}

// ---- Methods ------------------------------------------------------------------------------------
TEST(AmqpMethod, EveryMethodRoundTrips) {
  std::set<size_t> seen;
  for (const Method& m : EveryMethod()) {
    seen.insert(m.index());
    std::string bytes = EncodeMethod(m);
    auto back = DecodeMethod(bytes);
    ASSERT_TRUE(back.ok()) << NameOf(m) << ": " << back.status().message();
    EXPECT_TRUE(*back == m) << NameOf(m);
    EXPECT_EQ(EncodeMethod(*back), bytes) << NameOf(m);
    MethodId id = IdOf(m);
    EXPECT_EQ(PeekMethodId(bytes), std::optional<MethodId>(id));
  }
  EXPECT_EQ(seen.size(), std::variant_size_v<Method>) << "a method is missing from EveryMethod";
}

TEST(AmqpMethod, DefaultValuesRoundTrip) {
  // Every alternative default-constructed: catches a field list that reads more than it writes.
  for (Method m : EveryMethod()) {
    std::visit([](auto& x) { x = std::decay_t<decltype(x)>{}; }, m);
    auto back = DecodeMethod(EncodeMethod(m));
    ASSERT_TRUE(back.ok()) << NameOf(m);
    EXPECT_TRUE(*back == m) << NameOf(m);
  }
}

TEST(AmqpMethod, NamesAndContent) {
  EXPECT_EQ(NameOf(BasicPublish{}), "basic.publish");
  EXPECT_EQ(NameOf(ExchangeUnbindOk{}), "exchange.unbind-ok");
  EXPECT_EQ(NameOf(TxRollbackOk{}), "tx.rollback-ok");
  EXPECT_TRUE(CarriesContent(BasicPublish{}));
  EXPECT_TRUE(CarriesContent(BasicDeliver{}));
  EXPECT_TRUE(CarriesContent(BasicGetOk{}));
  EXPECT_TRUE(CarriesContent(BasicReturn{}));
  EXPECT_FALSE(CarriesContent(BasicAck{}));
  EXPECT_EQ(IdOf(ExchangeUnbindOk{}), (MethodId{40, 51}));
}

TEST(AmqpMethod, BitsShareOneOctet) {
  QueueDeclare q;
  q.queue = "q";
  q.durable = true;      // bit 1
  q.auto_delete = true;  // bit 3
  std::string expected = U16(50) + U16(10) + U16(0) + Short("q") + "\x0A"s + U32(0);
  EXPECT_EQ(EncodeMethod(q), expected);

  BasicNack n{7, true, true};
  EXPECT_EQ(EncodeMethod(n), U16(60) + U16(120) + U64(7) + "\x03"s);

  // deliver: the redelivered bit sits between a longlong and a shortstr.
  BasicDeliver d{"c", 1, true, "", "rk"};
  EXPECT_EQ(EncodeMethod(d),
            U16(60) + U16(60) + Short("c") + U64(1) + "\x01"s + Short("") + Short("rk"));
}

TEST(AmqpMethod, ConnectionStartAsRabbitSendsIt) {
  // connection.start, built by hand from the spec's grammar.
  std::string caps = Short("publisher_confirms") + "t\x01"s;
  std::string table =
      Short("product") + "S" + Long("RabbitMQ") + Short("capabilities") + "F" + Long(caps);
  std::string payload =
      U16(10) + U16(10) + "\x00\x09"s + Long(table) + Long("PLAIN AMQPLAIN") + Long("en_US");
  std::string frame = "\x01"s + U16(0) + Long(payload) + "\xCE"s;
  ASSERT_EQ(payload.size(), 97u);

  ConnectionStart start;
  start.server_properties.Set("product", FieldValue("RabbitMQ"));
  FieldTable c;
  c.Set("publisher_confirms", FieldValue(true));
  start.server_properties.Set("capabilities", FieldValue(c));
  EXPECT_EQ(EncodeMethodFrame(0, start), frame);

  FrameDecoder dec(kFrameMinSize);
  ASSERT_TRUE(dec.Feed(frame).ok());
  auto f = dec.Next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->type, kFrameMethod);
  EXPECT_EQ(f->channel, 0);
  auto m = DecodeMethod(f->payload);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(*m == Method(start));
}

// basic.publish + header + body, as amqplib sends
// ch.publish('', 'q1', Buffer.from('hello'), {contentType: 'text/plain', deliveryMode: 2}).
std::string AmqplibPublishBytes() {
  std::string method = U16(60) + U16(40) + U16(0) + Short("") + Short("q1") + "\x00"s;
  std::string header = U16(60) + U16(0) + U64(5) + U16(0x9000) + Short("text/plain") + "\x02"s;
  return "\x01"s + U16(1) + Long(method) + "\xCE"s + "\x02"s + U16(1) + Long(header) + "\xCE"s +
         "\x03"s + U16(1) + Long("hello") + "\xCE"s;
}

TEST(AmqpContent, PublishAsAmqplibSendsIt) {
  std::string bytes = AmqplibPublishBytes();
  BasicProperties props;
  props.content_type = "text/plain";
  props.delivery_mode = 2;
  EXPECT_EQ(EncodeContentFrames(1, BasicPublish{0, "", "q1", false, false}, props, "hello", 4096),
            bytes);

  FrameDecoder dec(4096);
  ASSERT_TRUE(dec.Feed(bytes).ok());
  CommandAssembler asm_(1 << 20);
  std::optional<Command> cmd;
  while (auto f = dec.Next()) {
    EXPECT_EQ(f->channel, 1);
    auto r = asm_.Add(*f);
    ASSERT_TRUE(r.ok()) << r.status().message();
    if (r->has_value()) cmd = std::move(*r);
  }
  ASSERT_TRUE(cmd.has_value());
  const auto* pub = std::get_if<BasicPublish>(&cmd->method);
  ASSERT_NE(pub, nullptr);
  EXPECT_EQ(pub->routing_key, "q1");
  ASSERT_TRUE(cmd->header.has_value());
  EXPECT_EQ(cmd->header->body_size, 5u);
  EXPECT_EQ(cmd->header->props, props);
  EXPECT_EQ(cmd->header->raw_properties, U16(0x9000) + Short("text/plain") + "\x02"s);
  EXPECT_EQ(cmd->body, "hello");
}

TEST(AmqpMethod, UnknownMethodIsNotImplemented) {
  auto r = DecodeMethod(U16(60) + U16(999));
  ASSERT_FALSE(r.ok());
  AmqpError e = ToAmqpError(r.status());
  EXPECT_EQ(e.code, kNotImplemented);
  EXPECT_EQ(e.class_id, 60);
  EXPECT_EQ(e.method_id, 999);
  auto c = DecodeMethod(U16(70) + U16(10));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(CodeOf(c.status()), kNotImplemented);
  EXPECT_EQ(ToAmqpError(c.status()).class_id, 70);
}

TEST(AmqpMethod, TrailingBytesAreSyntaxError) {
  auto r = DecodeMethod(EncodeMethod(BasicAck{1, false}) + "x");
  ASSERT_FALSE(r.ok());
  AmqpError e = ToAmqpError(r.status());
  EXPECT_EQ(e.code, kSyntaxError);
  EXPECT_EQ(e.class_id, 60);
  EXPECT_EQ(e.method_id, 80);
}

TEST(AmqpMethod, EveryTruncationIsSyntaxError) {
  for (const Method& m : EveryMethod()) {
    std::string bytes = EncodeMethod(m);
    for (size_t n = 0; n < bytes.size(); ++n) {
      auto r = DecodeMethod(std::string_view(bytes).substr(0, n));
      ASSERT_FALSE(r.ok()) << NameOf(m) << " cut at " << n;
      EXPECT_EQ(CodeOf(r.status()), kSyntaxError) << NameOf(m) << " cut at " << n;
      if (n >= 4) {
        EXPECT_EQ(ToAmqpError(r.status()).method_id, IdOf(m).method_id);
      }
    }
  }
}

TEST(AmqpMethod, ShortStringsAreCutAt255) {
  QueueDeclareOk ok{std::string(300, 'q'), 0, 0};
  auto back = DecodeMethod(EncodeMethod(ok));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(std::get<QueueDeclareOk>(*back).queue.size(), 255u);
  EXPECT_FALSE(ValidateShortString(std::string(256, 'x')));
  EXPECT_TRUE(ValidateShortString(std::string(255, 'x')));
}

// ---- Errors -------------------------------------------------------------------------------------
TEST(AmqpError, RoundTripsThroughStatus) {
  Status s = MakeAmqpError(kPreconditionFailed, "inequivalent arg 'durable'", 50, 10);
  EXPECT_FALSE(s.ok());
  AmqpError e = ToAmqpError(s);
  EXPECT_EQ(e.code, 406);
  EXPECT_EQ(e.text, "inequivalent arg 'durable'");
  EXPECT_EQ(e.class_id, 50);
  EXPECT_EQ(e.method_id, 10);
  EXPECT_TRUE(IsChannelError(e.code));
  EXPECT_FALSE(IsChannelError(kFrameError));
  AmqpError other = ToAmqpError(Status::IoError("disk"));
  EXPECT_EQ(other.code, kInternalError);
  EXPECT_EQ(other.text, "disk");
}

// ---- Frames -------------------------------------------------------------------------------------
std::string SomeStream() {
  std::string s = EncodeMethodFrame(0, ConnectionTuneOk{2047, 4096, 60});
  s += EncodeHeartbeat();
  s += EncodeContentFrames(3, BasicPublish{0, "ex", "rk", true, false}, AllProperties(),
                           std::string(10000, 'b'), 4096);
  s += EncodeMethodFrame(3, BasicAck{1, true});
  return s;
}

std::vector<Frame> DecodeAll(FrameDecoder& dec) {
  std::vector<Frame> out;
  while (auto f = dec.Next()) out.push_back(std::move(*f));
  return out;
}

TEST(AmqpFrame, ByteByByteEqualsWhole) {
  std::string stream = SomeStream();
  FrameDecoder whole(4096);
  ASSERT_TRUE(whole.Feed(stream).ok());
  std::vector<Frame> expected = DecodeAll(whole);
  // tune-ok, heartbeat, publish, header, 3 body frames (4088 + 4088 + 1824), ack.
  ASSERT_EQ(expected.size(), 8u);
  EXPECT_EQ(expected[1].type, kFrameHeartbeat);
  EXPECT_EQ(expected[4].payload.size(), 4096u - kFrameOverhead);

  FrameDecoder bytewise(4096);
  std::vector<Frame> got;
  for (char c : stream) {
    ASSERT_TRUE(bytewise.Feed(std::string_view(&c, 1)).ok());
    EXPECT_LE(bytewise.buffered_bytes(), 4096u);
    for (auto& f : DecodeAll(bytewise)) got.push_back(std::move(f));
  }
  EXPECT_EQ(got, expected);

  std::mt19937 rng(7);
  FrameDecoder chunks(4096);
  got.clear();
  for (size_t at = 0; at < stream.size();) {
    size_t n = std::uniform_int_distribution<size_t>(1, 5000)(rng);
    ASSERT_TRUE(chunks.Feed(std::string_view(stream).substr(at, n)).ok());
    at += n;
    for (auto& f : DecodeAll(chunks)) got.push_back(std::move(f));
  }
  EXPECT_EQ(got, expected);
}

TEST(AmqpFrame, PrefixesWaitWithoutError) {
  std::string frame = EncodeMethodFrame(1, BasicAck{3, false});
  for (size_t n = 0; n < frame.size(); ++n) {
    FrameDecoder dec(4096);
    ASSERT_TRUE(dec.Feed(std::string_view(frame).substr(0, n)).ok());
    EXPECT_FALSE(dec.Next().has_value()) << n;
  }
}

TEST(AmqpFrame, TooLargeFailsBeforeThePayloadArrives) {
  FrameDecoder dec(4096);
  std::string head = "\x01"s + U16(1) + U32(4096 - 8 + 1);
  Status s = dec.Feed(head);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(CodeOf(s), kFrameError);
  // Exactly frame_max is fine.
  FrameDecoder dec2(4096);
  EXPECT_TRUE(dec2.Feed(EncodeFrame(kFrameBody, 1, std::string(4096 - 8, 'x'))).ok());
  EXPECT_TRUE(dec2.Next().has_value());
  // After tune the new limit applies.
  FrameDecoder dec3(4096);
  dec3.set_frame_max(131072);
  EXPECT_TRUE(dec3.Feed(EncodeFrame(kFrameBody, 1, std::string(10000, 'x'))).ok());
  // frame_max 0: the hard limit.
  FrameDecoder dec4(0);
  EXPECT_EQ(dec4.frame_max(), kFrameMaxHardLimit);
  EXPECT_FALSE(dec4.Feed("\x03"s + U16(1) + U32(0xFFFFFFF0)).ok());
}

TEST(AmqpFrame, BadFrameEndUnknownTypeBadHeartbeat) {
  std::string frame = EncodeMethodFrame(1, BasicAck{3, false});
  frame.back() = '\xCD';
  FrameDecoder dec(4096);
  Status s = dec.Feed(frame);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(CodeOf(s), kFrameError);
  // Sticky: the connection is finished.
  EXPECT_FALSE(dec.Feed(EncodeHeartbeat()).ok());
  EXPECT_FALSE(dec.Next().has_value());

  FrameDecoder dec2(4096);
  EXPECT_EQ(CodeOf(dec2.Feed(EncodeFrame(4, 1, "x"))), kFrameError);
  FrameDecoder dec3(4096);
  EXPECT_EQ(CodeOf(dec3.Feed(EncodeFrame(kFrameHeartbeat, 1, ""))), kFrameError);
  FrameDecoder dec4(4096);
  EXPECT_EQ(CodeOf(dec4.Feed(EncodeFrame(kFrameHeartbeat, 0, "x"))), kFrameError);
}

// ---- Field tables -------------------------------------------------------------------------------
TEST(AmqpFieldTable, EveryTypeRoundTrips) {
  FieldTable t = EveryTypeTable();
  std::string bytes = EncodeFieldTable(t);
  auto back = DecodeFieldTable(bytes);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(*back, t);
  EXPECT_EQ(EncodeFieldTable(*back), bytes);
  EXPECT_EQ(back->Find("i64")->AsInt(), -5000000000LL);
  EXPECT_EQ(back->Find("u8")->AsInt(), 250);
  EXPECT_EQ(back->Find("bytes")->AsString(), "\x00\x01\xff"s);
  EXPECT_EQ(back->Find("nope"), nullptr);
  EXPECT_FALSE(back->Find("table")->AsInt().has_value());
}

TEST(AmqpFieldTable, HandBuiltRabbitTypes) {
  std::string body = Short("a") + "s" + U16(0xFFFE) +  // short-int -2
                     Short("b") + "U" + U16(5) +       // spec's signed 16
                     Short("c") + "L" + U64(uint64_t(-3)) + Short("d") + "l" + U64(9) + Short("e") +
                     "x" + Long("raw") + Short("f") + "V" + Short("g") + "T" + U64(1234) +
                     Short("h") + "A" + Long("t\x01"s + "I" + U32(7)) + Short("i") + "D" + "\x02"s +
                     U32(150);
  auto t = DecodeFieldTable(Long(body));
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(*t->Find("a")->get_if<int16_t>(), -2);
  EXPECT_EQ(*t->Find("b")->get_if<int16_t>(), 5);
  EXPECT_EQ(*t->Find("c")->get_if<int64_t>(), -3);
  EXPECT_EQ(*t->Find("d")->get_if<int64_t>(), 9);
  EXPECT_EQ(t->Find("e")->get_if<ByteArray>()->bytes, "raw");
  EXPECT_NE(t->Find("f")->get_if<Void>(), nullptr);
  EXPECT_EQ(t->Find("g")->get_if<Timestamp>()->seconds, 1234u);
  const FieldArray* a = t->Find("h")->get_if<FieldArray>();
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->items.size(), 2u);
  EXPECT_EQ(*a->items[1].get_if<int32_t>(), 7);
  EXPECT_EQ(*t->Find("i")->get_if<Decimal>(), (Decimal{2, 150}));
}

TEST(AmqpFieldTable, MalformedTablesFail) {
  EXPECT_FALSE(DecodeFieldTable(Long(Short("k") + "Z")).ok());             // unknown type
  EXPECT_FALSE(DecodeFieldTable(Long(Short("k") + "S" + U32(100))).ok());  // string past table end
  EXPECT_FALSE(DecodeFieldTable(U32(50) + "abc").ok());                    // table past input end
  EXPECT_FALSE(DecodeFieldTable(Long(Short("k"))).ok());                   // name without value
  std::string bytes = EncodeFieldTable(EveryTypeTable());
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(DecodeFieldTable(std::string_view(bytes).substr(0, n)).ok()) << n;
  }
}

FieldTable Nested(int depth) {
  FieldTable t;
  t.Set("leaf", FieldValue(int32_t{1}));
  for (int i = 0; i < depth; ++i) {
    FieldTable outer;
    outer.Set("n", FieldValue(std::move(t)));
    t = std::move(outer);
  }
  return t;
}

TEST(AmqpFieldTable, NestingIsBounded) {
  EXPECT_TRUE(DecodeFieldTable(EncodeFieldTable(Nested(kMaxFieldDepth))).ok());
  auto deep = DecodeFieldTable(EncodeFieldTable(Nested(kMaxFieldDepth + 1)));
  ASSERT_FALSE(deep.ok());
  EXPECT_EQ(CodeOf(deep.status()), kSyntaxError);
  // Arrays count too: 10,000 nested arrays must not recurse 10,000 deep.
  std::string v = "V";
  for (int i = 0; i < 10000; ++i) v = "A" + Long(v);
  EXPECT_FALSE(DecodeFieldTable(Long(Short("k") + v)).ok());
}

// ---- Content header and properties --------------------------------------------------------------
TEST(AmqpContent, AllPropertiesRoundTrip) {
  BasicProperties p = AllProperties();
  std::string raw = EncodeProperties(p);
  EXPECT_EQ(static_cast<uint8_t>(raw[0]), 0xFF);  // bits 15..8
  EXPECT_EQ(static_cast<uint8_t>(raw[1]), 0xFC);  // bits 7..2
  auto back = DecodeProperties(raw);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(*back, p);
  auto h = DecodeContentHeader(EncodeContentHeader(kClassBasic, 42, p));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->body_size, 42u);
  EXPECT_EQ(h->props, p);
  EXPECT_EQ(h->raw_properties, raw);
  EXPECT_EQ(EncodeProperties(BasicProperties{}), U16(0));
}

TEST(AmqpContent, RawPropertiesPassThroughByteForByte) {
  // Headers as a client might write them: the spec's 'U' and 'L' tags, which our encoder would
  // write as 's' and 'l'. The raw bytes must come out unchanged all the same.
  std::string headers = Short("x-death-count") + "U" + U16(3) + Short("big") + "L" + U64(1) +
                        Short("x-first") + "F" + Long(Short("z") + "V");
  std::string raw = U16(0x2000 | 0x1000 | 0x0100) + Long(headers) + "\x01"s + Short("1500");
  std::string payload = U16(60) + U16(0) + U64(99) + raw;
  auto h = DecodeContentHeader(payload);
  ASSERT_TRUE(h.ok()) << h.status().message();
  EXPECT_EQ(h->raw_properties, raw);
  EXPECT_EQ(h->props.expiration, "1500");
  EXPECT_EQ(h->props.delivery_mode, 1);
  ASSERT_TRUE(h->props.headers.has_value());
  EXPECT_EQ(h->props.headers->Find("x-death-count")->AsInt(), 3);
  EXPECT_NE(EncodeProperties(h->props), raw);  // the re-encoded form differs ('s' for 'U')
  std::string resent = EncodeContentHeaderRaw(kClassBasic, 99, h->raw_properties);
  EXPECT_EQ(resent, payload);
  EXPECT_EQ(EncodeContentHeaderRaw(kClassBasic, 7, raw), U16(60) + U16(0) + U64(7) + raw);
}

TEST(AmqpContent, MalformedHeadersFail) {
  std::string good = EncodeContentHeader(kClassBasic, 5, AllProperties());
  for (size_t n = 0; n < good.size(); ++n) {
    auto h = DecodeContentHeader(std::string_view(good).substr(0, n));
    ASSERT_FALSE(h.ok()) << n;
    EXPECT_EQ(CodeOf(h.status()), kSyntaxError) << n;
  }
  EXPECT_FALSE(DecodeContentHeader(good + "x").ok());
  EXPECT_FALSE(DecodeContentHeader(U16(60) + U16(0) + U64(0) + U16(0x0001)).ok());  // more flags
  auto wrong_class = DecodeContentHeader(U16(50) + U16(0) + U64(0) + U16(0));
  ASSERT_FALSE(wrong_class.ok());
  EXPECT_EQ(CodeOf(wrong_class.status()), kUnexpectedFrame);
}

TEST(AmqpContent, BodySplitByFrameMax) {
  std::string body(10000, 'z');
  std::string bytes =
      EncodeContentFrames(1, BasicDeliver{"c", 1, false, "", "q"}, BasicProperties{}, body, 4096);
  FrameDecoder dec(4096);
  ASSERT_TRUE(dec.Feed(bytes).ok());
  auto frames = DecodeAll(dec);
  ASSERT_EQ(frames.size(), 5u);
  EXPECT_EQ(frames[2].payload.size(), 4088u);
  EXPECT_EQ(frames[3].payload.size(), 4088u);
  EXPECT_EQ(frames[4].payload.size(), 10000u - 2 * 4088);
  // Empty body: method + header only.
  std::string empty = EncodeContentFrames(1, BasicPublish{}, BasicProperties{}, "", 4096);
  FrameDecoder dec2(4096);
  ASSERT_TRUE(dec2.Feed(empty).ok());
  EXPECT_EQ(DecodeAll(dec2).size(), 2u);
}

// ---- Command assembly ---------------------------------------------------------------------------
Frame FrameOf(uint8_t type, std::string payload) { return Frame{type, 1, std::move(payload)}; }

TEST(AmqpAssembler, AssemblesAndChecksOrder) {
  CommandAssembler a(100);
  // A method without content completes at once.
  auto ack = a.Add(FrameOf(kFrameMethod, EncodeMethod(BasicAck{4, false})));
  ASSERT_TRUE(ack.ok());
  ASSERT_TRUE(ack->has_value());
  EXPECT_FALSE((*ack)->header.has_value());

  auto m = a.Add(FrameOf(kFrameMethod, EncodeMethod(BasicPublish{})));
  ASSERT_TRUE(m.ok() && !m->has_value());
  EXPECT_TRUE(a.in_progress());
  ASSERT_TRUE(a.Add(FrameOf(kFrameHeader, EncodeContentHeader(60, 6, {}))).ok());
  auto b1 = a.Add(FrameOf(kFrameBody, "abc"));
  ASSERT_TRUE(b1.ok() && !b1->has_value());
  auto b2 = a.Add(FrameOf(kFrameBody, "def"));
  ASSERT_TRUE(b2.ok() && b2->has_value());
  EXPECT_EQ((*b2)->body, "abcdef");
  EXPECT_FALSE(a.in_progress());

  // Zero-length body completes with the header.
  ASSERT_TRUE(a.Add(FrameOf(kFrameMethod, EncodeMethod(BasicPublish{}))).ok());
  auto z = a.Add(FrameOf(kFrameHeader, EncodeContentHeader(60, 0, {})));
  ASSERT_TRUE(z.ok() && z->has_value());
}

TEST(AmqpAssembler, OutOfOrderFrames) {
  CommandAssembler a(100);
  EXPECT_EQ(CodeOf(a.Add(FrameOf(kFrameBody, "x")).status()), kUnexpectedFrame);
  EXPECT_EQ(CodeOf(a.Add(FrameOf(kFrameHeader, EncodeContentHeader(60, 1, {}))).status()),
            kUnexpectedFrame);
  ASSERT_TRUE(a.Add(FrameOf(kFrameMethod, EncodeMethod(BasicPublish{}))).ok());
  auto mid = a.Add(FrameOf(kFrameMethod, EncodeMethod(BasicAck{})));
  EXPECT_EQ(CodeOf(mid.status()), kUnexpectedFrame);
  EXPECT_EQ(ToAmqpError(mid.status()).method_id, 40);

  ASSERT_TRUE(a.Add(FrameOf(kFrameMethod, EncodeMethod(BasicPublish{}))).ok());
  ASSERT_TRUE(a.Add(FrameOf(kFrameHeader, EncodeContentHeader(60, 2, {}))).ok());
  EXPECT_EQ(CodeOf(a.Add(FrameOf(kFrameBody, "xyz")).status()), kFrameError);

  ASSERT_TRUE(a.Add(FrameOf(kFrameMethod, EncodeMethod(BasicPublish{}))).ok());
  auto big = a.Add(FrameOf(kFrameHeader, EncodeContentHeader(60, 101, {})));
  EXPECT_EQ(CodeOf(big.status()), kPreconditionFailed);
  EXPECT_FALSE(a.in_progress());
}

// ---- Random input -------------------------------------------------------------------------------
TEST(AmqpFuzz, RandomBytesNeverCrash) {
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<std::string> seeds;
  for (const Method& m : EveryMethod()) seeds.push_back(EncodeMethod(m));
  seeds.push_back(EncodeContentHeader(60, 10, AllProperties()));
  seeds.push_back(EncodeFieldTable(EveryTypeTable()));
  seeds.push_back(SomeStream());
  size_t decoded = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string in;
    if (i % 2 == 0) {
      // Pure noise, sometimes starting with a valid class/method pair.
      size_t n = std::uniform_int_distribution<size_t>(0, 300)(rng);
      for (size_t k = 0; k < n; ++k) in.push_back(static_cast<char>(byte(rng)));
      if (i % 4 == 0 && in.size() >= 4) {
        std::string id = EncodeMethod(EveryMethod()[i % std::variant_size_v<Method>]).substr(0, 4);
        in.replace(0, 4, id);
      }
    } else {
      // A valid encoding with a few bytes mutated, cut or extended.
      in = seeds[static_cast<size_t>(i) % seeds.size()];
      int flips = std::uniform_int_distribution<int>(1, 4)(rng);
      for (int k = 0; k < flips && !in.empty(); ++k) {
        in[std::uniform_int_distribution<size_t>(0, in.size() - 1)(rng)] =
            static_cast<char>(byte(rng));
      }
      if (i % 3 == 0) in.resize(std::uniform_int_distribution<size_t>(0, in.size())(rng));
    }
    decoded += DecodeMethod(in).ok();
    decoded += DecodeContentHeader(in).ok();
    decoded += DecodeFieldTable(in).ok();
    FrameDecoder dec(4096);
    for (size_t at = 0; at < in.size(); at += 17) {
      if (!dec.Feed(std::string_view(in).substr(at, 17)).ok()) break;
    }
    CommandAssembler a(1 << 20);
    while (auto f = dec.Next()) {
      if (!a.Add(*f).ok()) break;
    }
    EXPECT_LE(dec.buffered_bytes(), 4096u);
  }
  EXPECT_GT(decoded, 0u);  // some mutations stay valid: the loop exercised the success paths too
}

}  // namespace
}  // namespace haven::mq::amqp
