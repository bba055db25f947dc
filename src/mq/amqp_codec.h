// AMQP 0-9-1 wire codec: frames, method arguments and content headers. Pure: bytes in, values out;
// the broker shell (src/node) owns the socket.
//
// Errors: every decoding error is a Status whose message starts with "[amqp CODE CLASS/METHOD] "
// (CODE is the AMQP reply code to close with, e.g. 501 FRAME_ERROR, 502 SYNTAX_ERROR, 505
// UNEXPECTED_FRAME, 540 NOT_IMPLEMENTED; CLASS/METHOD the ids of the offending method, 0/0 when
// none). MakeAmqpError builds such a Status and ToAmqpError reads it back; IsChannelError (in
// amqp_types.h) tells a channel close from a connection close.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "base/status.h"
#include "mq/amqp_types.h"

namespace haven::mq::amqp {

// ---- Errors -------------------------------------------------------------------------------------
struct AmqpError {
  uint16_t code = kInternalError;
  std::string text;
  uint16_t class_id = 0;
  uint16_t method_id = 0;
};
Status MakeAmqpError(uint16_t code, std::string text, uint16_t class_id = 0,
                     uint16_t method_id = 0);
// A Status not made by MakeAmqpError maps to 541 INTERNAL_ERROR with its message as text.
AmqpError ToAmqpError(const Status& status);

// ---- Frames -------------------------------------------------------------------------------------
struct Frame {
  uint8_t type = 0;
  uint16_t channel = 0;
  std::string payload;
  bool operator==(const Frame&) const = default;
};

// true for "AMQP\0\0\x09\x01". Any other 8 bytes: false (the shell writes kProtocolHeader and
// closes, spec 4.2.2). Fewer than 8 bytes: an error (the caller must wait for 8).
Result<bool> ParseProtocolHeader(std::string_view first8);

// Cuts a byte stream (after the 8-byte protocol header) into frames. Any split of the stream gives
// the same frames. Errors (all 501 FRAME_ERROR): a frame larger than frame_max, a frame-end octet
// other than 0xCE, an unknown frame type, a heartbeat on a channel other than 0 or with a payload.
// After an error the decoder stays failed: the connection must close. Feed decodes eagerly, so the
// caller drains Next() after each Feed; the frames held are bounded by the bytes fed.
class FrameDecoder {
 public:
  // frame_max counts the whole frame (header, payload and frame-end), as in connection.tune;
  // 0 means kFrameMaxHardLimit.
  explicit FrameDecoder(uint32_t frame_max);

  // Appends bytes; decodes every complete frame. Returns the first error met (and every later call
  // returns it too).
  Status Feed(std::string_view bytes);
  // The next decoded frame, in stream order.
  std::optional<Frame> Next();

  // After tune-ok the negotiated frame-max applies.
  void set_frame_max(uint32_t frame_max);
  uint32_t frame_max() const { return frame_max_; }
  // Bytes received but not yet part of a complete frame (bounded by frame_max).
  size_t buffered_bytes() const { return buffer_.size() - pos_; }

 private:
  Status DecodeBuffered();

  uint32_t frame_max_;
  std::string buffer_;
  size_t pos_ = 0;
  std::deque<Frame> frames_;
  Status error_;
};

// type, channel, size, payload, frame-end.
std::string EncodeFrame(uint8_t type, uint16_t channel, std::string_view payload);
std::string EncodeHeartbeat();

// ---- Methods ------------------------------------------------------------------------------------
// One struct per method. Fields named "reserved" in the spec are kept so that a decoded method
// re-encodes byte for byte. Shortstr fields longer than 255 bytes are cut to 255 when encoded:
// callers validate names they accept from clients (ValidateShortString).
#define HAVEN_AMQP_METHOD(cls, mth, T)       \
  static constexpr uint16_t kClassId = cls;  \
  static constexpr uint16_t kMethodId = mth; \
  bool operator==(const T&) const = default

struct ConnectionStart {
  HAVEN_AMQP_METHOD(10, 10, ConnectionStart);
  uint8_t version_major = 0;
  uint8_t version_minor = 9;
  FieldTable server_properties;
  std::string mechanisms = "PLAIN AMQPLAIN";  // longstr
  std::string locales = "en_US";              // longstr
};
struct ConnectionStartOk {
  HAVEN_AMQP_METHOD(10, 11, ConnectionStartOk);
  FieldTable client_properties;
  std::string mechanism;  // shortstr
  std::string response;   // longstr: PLAIN is "\0user\0password"
  std::string locale;     // shortstr
};
struct ConnectionSecure {
  HAVEN_AMQP_METHOD(10, 20, ConnectionSecure);
  std::string challenge;  // longstr
};
struct ConnectionSecureOk {
  HAVEN_AMQP_METHOD(10, 21, ConnectionSecureOk);
  std::string response;  // longstr
};
struct ConnectionTune {
  HAVEN_AMQP_METHOD(10, 30, ConnectionTune);
  uint16_t channel_max = 0;
  uint32_t frame_max = 0;
  uint16_t heartbeat = 0;
};
struct ConnectionTuneOk {
  HAVEN_AMQP_METHOD(10, 31, ConnectionTuneOk);
  uint16_t channel_max = 0;
  uint32_t frame_max = 0;
  uint16_t heartbeat = 0;
};
struct ConnectionOpen {
  HAVEN_AMQP_METHOD(10, 40, ConnectionOpen);
  std::string virtual_host = "/";
  std::string reserved1;   // capabilities
  bool reserved2 = false;  // insist
};
struct ConnectionOpenOk {
  HAVEN_AMQP_METHOD(10, 41, ConnectionOpenOk);
  std::string reserved1;  // known-hosts
};
struct ConnectionClose {
  HAVEN_AMQP_METHOD(10, 50, ConnectionClose);
  uint16_t reply_code = 0;
  std::string reply_text;
  uint16_t class_id = 0;
  uint16_t method_id = 0;
};
struct ConnectionCloseOk {
  HAVEN_AMQP_METHOD(10, 51, ConnectionCloseOk);
};
struct ConnectionBlocked {
  HAVEN_AMQP_METHOD(10, 60, ConnectionBlocked);
  std::string reason;
};
struct ConnectionUnblocked {
  HAVEN_AMQP_METHOD(10, 61, ConnectionUnblocked);
};

struct ChannelOpen {
  HAVEN_AMQP_METHOD(20, 10, ChannelOpen);
  std::string reserved1;  // out-of-band, shortstr
};
struct ChannelOpenOk {
  HAVEN_AMQP_METHOD(20, 11, ChannelOpenOk);
  std::string reserved1;  // channel-id, longstr
};
struct ChannelFlow {
  HAVEN_AMQP_METHOD(20, 20, ChannelFlow);
  bool active = true;
};
struct ChannelFlowOk {
  HAVEN_AMQP_METHOD(20, 21, ChannelFlowOk);
  bool active = true;
};
struct ChannelClose {
  HAVEN_AMQP_METHOD(20, 40, ChannelClose);
  uint16_t reply_code = 0;
  std::string reply_text;
  uint16_t class_id = 0;
  uint16_t method_id = 0;
};
struct ChannelCloseOk {
  HAVEN_AMQP_METHOD(20, 41, ChannelCloseOk);
};

struct ExchangeDeclare {
  HAVEN_AMQP_METHOD(40, 10, ExchangeDeclare);
  uint16_t reserved1 = 0;  // ticket
  std::string exchange;
  std::string type = "direct";
  bool passive = false;
  bool durable = false;
  bool auto_delete = false;
  bool internal = false;
  bool no_wait = false;
  FieldTable arguments;
};
struct ExchangeDeclareOk {
  HAVEN_AMQP_METHOD(40, 11, ExchangeDeclareOk);
};
struct ExchangeDelete {
  HAVEN_AMQP_METHOD(40, 20, ExchangeDelete);
  uint16_t reserved1 = 0;
  std::string exchange;
  bool if_unused = false;
  bool no_wait = false;
};
struct ExchangeDeleteOk {
  HAVEN_AMQP_METHOD(40, 21, ExchangeDeleteOk);
};
struct ExchangeBind {
  HAVEN_AMQP_METHOD(40, 30, ExchangeBind);
  uint16_t reserved1 = 0;
  std::string destination;
  std::string source;
  std::string routing_key;
  bool no_wait = false;
  FieldTable arguments;
};
struct ExchangeBindOk {
  HAVEN_AMQP_METHOD(40, 31, ExchangeBindOk);
};
struct ExchangeUnbind {
  HAVEN_AMQP_METHOD(40, 40, ExchangeUnbind);
  uint16_t reserved1 = 0;
  std::string destination;
  std::string source;
  std::string routing_key;
  bool no_wait = false;
  FieldTable arguments;
};
struct ExchangeUnbindOk {
  HAVEN_AMQP_METHOD(40, 51, ExchangeUnbindOk);  // 51, not 41: as the spec numbers it
};

struct QueueDeclare {
  HAVEN_AMQP_METHOD(50, 10, QueueDeclare);
  uint16_t reserved1 = 0;
  std::string queue;
  bool passive = false;
  bool durable = false;
  bool exclusive = false;
  bool auto_delete = false;
  bool no_wait = false;
  FieldTable arguments;
};
struct QueueDeclareOk {
  HAVEN_AMQP_METHOD(50, 11, QueueDeclareOk);
  std::string queue;
  uint32_t message_count = 0;
  uint32_t consumer_count = 0;
};
struct QueueBind {
  HAVEN_AMQP_METHOD(50, 20, QueueBind);
  uint16_t reserved1 = 0;
  std::string queue;
  std::string exchange;
  std::string routing_key;
  bool no_wait = false;
  FieldTable arguments;
};
struct QueueBindOk {
  HAVEN_AMQP_METHOD(50, 21, QueueBindOk);
};
struct QueuePurge {
  HAVEN_AMQP_METHOD(50, 30, QueuePurge);
  uint16_t reserved1 = 0;
  std::string queue;
  bool no_wait = false;
};
struct QueuePurgeOk {
  HAVEN_AMQP_METHOD(50, 31, QueuePurgeOk);
  uint32_t message_count = 0;
};
struct QueueDelete {
  HAVEN_AMQP_METHOD(50, 40, QueueDelete);
  uint16_t reserved1 = 0;
  std::string queue;
  bool if_unused = false;
  bool if_empty = false;
  bool no_wait = false;
};
struct QueueDeleteOk {
  HAVEN_AMQP_METHOD(50, 41, QueueDeleteOk);
  uint32_t message_count = 0;
};
struct QueueUnbind {  // no no-wait bit in queue.unbind
  HAVEN_AMQP_METHOD(50, 50, QueueUnbind);
  uint16_t reserved1 = 0;
  std::string queue;
  std::string exchange;
  std::string routing_key;
  FieldTable arguments;
};
struct QueueUnbindOk {
  HAVEN_AMQP_METHOD(50, 51, QueueUnbindOk);
};

struct BasicQos {
  HAVEN_AMQP_METHOD(60, 10, BasicQos);
  uint32_t prefetch_size = 0;
  uint16_t prefetch_count = 0;
  bool global = false;
};
struct BasicQosOk {
  HAVEN_AMQP_METHOD(60, 11, BasicQosOk);
};
struct BasicConsume {
  HAVEN_AMQP_METHOD(60, 20, BasicConsume);
  uint16_t reserved1 = 0;
  std::string queue;
  std::string consumer_tag;
  bool no_local = false;
  bool no_ack = false;
  bool exclusive = false;
  bool no_wait = false;
  FieldTable arguments;
};
struct BasicConsumeOk {
  HAVEN_AMQP_METHOD(60, 21, BasicConsumeOk);
  std::string consumer_tag;
};
struct BasicCancel {
  HAVEN_AMQP_METHOD(60, 30, BasicCancel);
  std::string consumer_tag;
  bool no_wait = false;
};
struct BasicCancelOk {
  HAVEN_AMQP_METHOD(60, 31, BasicCancelOk);
  std::string consumer_tag;
};
struct BasicPublish {  // carries content
  HAVEN_AMQP_METHOD(60, 40, BasicPublish);
  uint16_t reserved1 = 0;
  std::string exchange;
  std::string routing_key;
  bool mandatory = false;
  bool immediate = false;
};
struct BasicReturn {  // carries content
  HAVEN_AMQP_METHOD(60, 50, BasicReturn);
  uint16_t reply_code = 0;
  std::string reply_text;
  std::string exchange;
  std::string routing_key;
};
struct BasicDeliver {  // carries content
  HAVEN_AMQP_METHOD(60, 60, BasicDeliver);
  std::string consumer_tag;
  uint64_t delivery_tag = 0;
  bool redelivered = false;
  std::string exchange;
  std::string routing_key;
};
struct BasicGet {
  HAVEN_AMQP_METHOD(60, 70, BasicGet);
  uint16_t reserved1 = 0;
  std::string queue;
  bool no_ack = false;
};
struct BasicGetOk {  // carries content
  HAVEN_AMQP_METHOD(60, 71, BasicGetOk);
  uint64_t delivery_tag = 0;
  bool redelivered = false;
  std::string exchange;
  std::string routing_key;
  uint32_t message_count = 0;
};
struct BasicGetEmpty {
  HAVEN_AMQP_METHOD(60, 72, BasicGetEmpty);
  std::string reserved1;  // cluster-id
};
struct BasicAck {
  HAVEN_AMQP_METHOD(60, 80, BasicAck);
  uint64_t delivery_tag = 0;
  bool multiple = false;
};
struct BasicReject {
  HAVEN_AMQP_METHOD(60, 90, BasicReject);
  uint64_t delivery_tag = 0;
  bool requeue = true;
};
struct BasicRecoverAsync {
  HAVEN_AMQP_METHOD(60, 100, BasicRecoverAsync);
  bool requeue = false;
};
struct BasicRecover {
  HAVEN_AMQP_METHOD(60, 110, BasicRecover);
  bool requeue = false;
};
struct BasicRecoverOk {
  HAVEN_AMQP_METHOD(60, 111, BasicRecoverOk);
};
struct BasicNack {
  HAVEN_AMQP_METHOD(60, 120, BasicNack);
  uint64_t delivery_tag = 0;
  bool multiple = false;
  bool requeue = true;
};

struct ConfirmSelect {
  HAVEN_AMQP_METHOD(85, 10, ConfirmSelect);
  bool no_wait = false;
};
struct ConfirmSelectOk {
  HAVEN_AMQP_METHOD(85, 11, ConfirmSelectOk);
};

struct TxSelect {
  HAVEN_AMQP_METHOD(90, 10, TxSelect);
};
struct TxSelectOk {
  HAVEN_AMQP_METHOD(90, 11, TxSelectOk);
};
struct TxCommit {
  HAVEN_AMQP_METHOD(90, 20, TxCommit);
};
struct TxCommitOk {
  HAVEN_AMQP_METHOD(90, 21, TxCommitOk);
};
struct TxRollback {
  HAVEN_AMQP_METHOD(90, 30, TxRollback);
};
struct TxRollbackOk {
  HAVEN_AMQP_METHOD(90, 31, TxRollbackOk);
};

#undef HAVEN_AMQP_METHOD

using Method = std::variant<
    ConnectionStart, ConnectionStartOk, ConnectionSecure, ConnectionSecureOk, ConnectionTune,
    ConnectionTuneOk, ConnectionOpen, ConnectionOpenOk, ConnectionClose, ConnectionCloseOk,
    ConnectionBlocked, ConnectionUnblocked, ChannelOpen, ChannelOpenOk, ChannelFlow, ChannelFlowOk,
    ChannelClose, ChannelCloseOk, ExchangeDeclare, ExchangeDeclareOk, ExchangeDelete,
    ExchangeDeleteOk, ExchangeBind, ExchangeBindOk, ExchangeUnbind, ExchangeUnbindOk, QueueDeclare,
    QueueDeclareOk, QueueBind, QueueBindOk, QueuePurge, QueuePurgeOk, QueueDelete, QueueDeleteOk,
    QueueUnbind, QueueUnbindOk, BasicQos, BasicQosOk, BasicConsume, BasicConsumeOk, BasicCancel,
    BasicCancelOk, BasicPublish, BasicReturn, BasicDeliver, BasicGet, BasicGetOk, BasicGetEmpty,
    BasicAck, BasicReject, BasicRecoverAsync, BasicRecover, BasicRecoverOk, BasicNack,
    ConfirmSelect, ConfirmSelectOk, TxSelect, TxSelectOk, TxCommit, TxCommitOk, TxRollback,
    TxRollbackOk>;

struct MethodId {
  uint16_t class_id = 0;
  uint16_t method_id = 0;
  bool operator==(const MethodId&) const = default;
};
MethodId IdOf(const Method& method);
// "basic.publish", for logs and close texts.
std::string_view NameOf(const Method& method);
// basic.publish, basic.return, basic.deliver and basic.get-ok are followed by a header and a body.
bool CarriesContent(const Method& method);

// The class and method ids at the start of a method payload (for error replies when decoding fails
// later); nullopt if the payload is shorter than 4 bytes.
std::optional<MethodId> PeekMethodId(std::string_view payload);

// Decodes a method frame's payload. Unknown class/method: 540 NOT_IMPLEMENTED; truncated or
// malformed arguments (bad field table, bytes left over): 502 SYNTAX_ERROR. The error carries the
// class and method ids.
Result<Method> DecodeMethod(std::string_view payload);
// The method frame's payload (class id, method id, arguments).
std::string EncodeMethod(const Method& method);
// A whole method frame.
std::string EncodeMethodFrame(uint16_t channel, const Method& method);

// ---- Content ------------------------------------------------------------------------------------
struct ContentHeader {
  uint16_t class_id = kClassBasic;
  uint64_t body_size = 0;
  BasicProperties props;
  // The property flags and property list exactly as received: re-sent unchanged on delivery so that
  // properties and headers pass through byte for byte.
  std::string raw_properties;
};

// Decodes a header frame's payload (class-id, weight, body-size, flags, property list).
// Errors: 502 SYNTAX_ERROR for truncation or a malformed property; 505 for a class other than
// basic.
Result<ContentHeader> DecodeContentHeader(std::string_view payload);
// Property flags + property list for `props` (the form kept in raw_properties).
std::string EncodeProperties(const BasicProperties& props);
// Parses property flags + property list (raw_properties) back into fields.
Result<BasicProperties> DecodeProperties(std::string_view raw_properties);
// A header frame's payload from parsed properties.
std::string EncodeContentHeader(uint16_t class_id, uint64_t body_size,
                                const BasicProperties& props);
// A header frame's payload from raw properties (flags + list) as received, with a new body size.
std::string EncodeContentHeaderRaw(uint16_t class_id, uint64_t body_size,
                                   std::string_view raw_properties);

// Method frame + header frame + body frames, each body frame at most frame_max bytes in all
// (frame_max 0: kFrameMaxHardLimit). An empty body sends no body frame. raw_properties as in
// ContentHeader::raw_properties.
std::string EncodeContentFrames(uint16_t channel, const Method& method,
                                std::string_view raw_properties, std::string_view body,
                                uint32_t frame_max);
std::string EncodeContentFrames(uint16_t channel, const Method& method,
                                const BasicProperties& props, std::string_view body,
                                uint32_t frame_max);

// A method with its content, as the broker handles it.
struct Command {
  Method method;
  std::optional<ContentHeader> header;  // set iff CarriesContent(method)
  std::string body;
};

// Gathers, for one channel, a content-bearing method with its header and body frames into one
// Command (spec 4.2.6). Errors: a header or body frame when none is expected, or a method frame
// while a content is incomplete: 505 UNEXPECTED_FRAME; more body than body-size: 501; body-size
// above max_body_size: 406 PRECONDITION_FAILED (a channel error, as RabbitMQ's max message size).
// Method frames are decoded with DecodeMethod (its errors pass through).
class CommandAssembler {
 public:
  explicit CommandAssembler(uint64_t max_body_size);
  // Takes a method, header or body frame of this channel. Returns a Command when one is complete.
  Result<std::optional<Command>> Add(const Frame& frame);
  // True while a content-bearing method waits for its header or body.
  bool in_progress() const { return pending_.has_value(); }
  void Reset() { pending_.reset(); }

 private:
  uint64_t max_body_size_;
  std::optional<Command> pending_;
};

// Short strings hold at most 255 bytes; names the broker stores (queues, exchanges, consumer
// tags) must also fit.
bool ValidateShortString(std::string_view s);

// Field-table codec, exposed for tests and for storing queue arguments.
Result<FieldTable> DecodeFieldTable(std::string_view bytes);  // bytes: the 4-byte size + entries
std::string EncodeFieldTable(const FieldTable& table);

}  // namespace haven::mq::amqp
