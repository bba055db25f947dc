// AMQP 0-9-1 value types (field tables, basic properties) and wire constants shared by the codec
// and the broker shell.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace haven::mq::amqp {

// ---- Frames -------------------------------------------------------------------------------------
inline constexpr uint8_t kFrameMethod = 1;
inline constexpr uint8_t kFrameHeader = 2;
inline constexpr uint8_t kFrameBody = 3;
inline constexpr uint8_t kFrameHeartbeat = 8;
inline constexpr uint8_t kFrameEnd = 0xCE;
// type(1) + channel(2) + size(4) before the payload, frame-end(1) after it.
inline constexpr uint32_t kFrameOverhead = 8;
// Every peer accepts frames this large before connection.tune-ok (spec 4.2.3, frame-min-size).
inline constexpr uint32_t kFrameMinSize = 4096;
// frame-max 0 means "no limit" in tune; we still refuse anything above this.
inline constexpr uint32_t kFrameMaxHardLimit = 128u * 1024 * 1024;
inline constexpr std::string_view kProtocolHeader{"AMQP\x00\x00\x09\x01", 8};

// ---- Reply codes (spec constants) ---------------------------------------------------------------
inline constexpr uint16_t kReplySuccess = 200;
inline constexpr uint16_t kContentTooLarge = 311;  // soft
inline constexpr uint16_t kNoRoute = 312;          // basic.return
inline constexpr uint16_t kNoConsumers = 313;      // basic.return
inline constexpr uint16_t kConnectionForced = 320;
inline constexpr uint16_t kInvalidPath = 402;
inline constexpr uint16_t kAccessRefused = 403;       // soft
inline constexpr uint16_t kNotFound = 404;            // soft
inline constexpr uint16_t kResourceLocked = 405;      // soft
inline constexpr uint16_t kPreconditionFailed = 406;  // soft
inline constexpr uint16_t kFrameError = 501;
inline constexpr uint16_t kSyntaxError = 502;
inline constexpr uint16_t kCommandInvalid = 503;
inline constexpr uint16_t kChannelError = 504;
inline constexpr uint16_t kUnexpectedFrame = 505;
inline constexpr uint16_t kResourceError = 506;
inline constexpr uint16_t kNotAllowed = 530;
inline constexpr uint16_t kNotImplemented = 540;
inline constexpr uint16_t kInternalError = 541;

// Soft errors close the channel (channel.close); all others close the connection
// (connection.close).
constexpr bool IsChannelError(uint16_t code) {
  return code == kContentTooLarge || code == kNoRoute || code == kNoConsumers ||
         code == kAccessRefused || code == kNotFound || code == kResourceLocked ||
         code == kPreconditionFailed;
}

// ---- Class ids ----------------------------------------------------------------------------------
inline constexpr uint16_t kClassConnection = 10;
inline constexpr uint16_t kClassChannel = 20;
inline constexpr uint16_t kClassExchange = 40;
inline constexpr uint16_t kClassQueue = 50;
inline constexpr uint16_t kClassBasic = 60;
inline constexpr uint16_t kClassConfirm = 85;
inline constexpr uint16_t kClassTx = 90;

// ---- Field tables -------------------------------------------------------------------------------
// Nesting limit for tables and arrays inside tables: bounds decoder recursion.
inline constexpr int kMaxFieldDepth = 16;

struct FieldValue;
struct FieldEntry;

// 'D': value / 10^scale.
struct Decimal {
  uint8_t scale = 0;
  uint32_t value = 0;
  bool operator==(const Decimal&) const = default;
};
// 'T': POSIX seconds.
struct Timestamp {
  uint64_t seconds = 0;
  bool operator==(const Timestamp&) const = default;
};
// 'x': RabbitMQ's byte array (same wire form as 'S', kept distinct so it re-encodes as 'x').
struct ByteArray {
  std::string bytes;
  bool operator==(const ByteArray&) const = default;
};
// 'V': no value.
struct Void {
  bool operator==(const Void&) const = default;
};
// 'A'
// FieldArray and FieldTable hold FieldValues, which hold them: their special members are defined
// in amqp_codec.cc, where FieldValue is complete (clang refuses the implicit ones here).
struct FieldArray {
  FieldArray();
  explicit FieldArray(std::vector<FieldValue> values);
  FieldArray(const FieldArray&);
  FieldArray(FieldArray&&) noexcept;
  FieldArray& operator=(const FieldArray&);
  FieldArray& operator=(FieldArray&&) noexcept;
  ~FieldArray();

  std::vector<FieldValue> items;
  bool operator==(const FieldArray& o) const;
};
// 'F' (and every table argument). Entries keep their wire order; a duplicate name is kept as sent.
struct FieldTable {
  FieldTable();
  FieldTable(const FieldTable&);
  FieldTable(FieldTable&&) noexcept;
  FieldTable& operator=(const FieldTable&);
  FieldTable& operator=(FieldTable&&) noexcept;
  ~FieldTable();

  // A named struct, not std::pair: a pair of an incomplete FieldValue is ill-formed (clang says
  // so).
  std::vector<FieldEntry> entries;
  bool operator==(const FieldTable& o) const;

  // First entry named `name`, or null.
  const FieldValue* Find(std::string_view name) const;
  // Replaces the first entry named `name` or appends one.
  void Set(std::string name, FieldValue value);
  bool empty() const;
};

// One table value. The alternative is the wire type, following RabbitMQ's table types:
//   t bool, b int8_t, B uint8_t, s int16_t, u uint16_t, I int32_t, i uint32_t, l int64_t,
//   f float, d double, D Decimal, S std::string (long string), x ByteArray, A FieldArray,
//   T Timestamp, F FieldTable, V Void.
// The spec's own 'U' (signed 16) and 'L' (signed 64) are accepted and decode as int16_t / int64_t,
// so they re-encode as 's' / 'l'. 'L' is treated as signed 64, as RabbitMQ does.
struct FieldValue {
  using Value = std::variant<Void, bool, int8_t, uint8_t, int16_t, uint16_t, int32_t, uint32_t,
                             int64_t, float, double, Decimal, std::string, ByteArray, FieldArray,
                             Timestamp, FieldTable>;
  Value value;

  FieldValue() = default;
  template <typename T>
  requires(!std::is_same_v<std::decay_t<T>, FieldValue> && std::is_constructible_v<Value, T>)
      FieldValue(T v)
      : value(std::move(v)) {}                          // NOLINT(google-explicit-constructor)
  FieldValue(const char* s) : value(std::string(s)) {}  // NOLINT(google-explicit-constructor)

  bool operator==(const FieldValue& o) const { return value == o.value; }

  template <typename T>
  const T* get_if() const {
    return std::get_if<T>(&value);
  }
  // Any integer alternative widened to int64 (uint64 never occurs); nullopt for other types.
  // Clients send numeric arguments such as x-message-ttl with whatever width they like.
  std::optional<int64_t> AsInt() const;
  // 'S' or 'x' contents; nullopt for other types.
  std::optional<std::string_view> AsString() const;
};

// One named table entry.
struct FieldEntry {
  std::string name;
  FieldValue value;
  bool operator==(const FieldEntry&) const = default;
};

// ---- Basic properties (content header of class basic) -------------------------------------------
// The 14 properties, in wire order; property-flags bit 15 is content_type, bit 2 is cluster_id.
struct BasicProperties {
  std::optional<std::string> content_type;      // bit 15, shortstr
  std::optional<std::string> content_encoding;  // bit 14, shortstr
  std::optional<FieldTable> headers;            // bit 13, table
  std::optional<uint8_t> delivery_mode;         // bit 12, octet: 1 transient, 2 persistent
  std::optional<uint8_t> priority;              // bit 11, octet
  std::optional<std::string> correlation_id;    // bit 10, shortstr
  std::optional<std::string> reply_to;          // bit 9, shortstr
  std::optional<std::string> expiration;        // bit 8, shortstr: per-message TTL in ms, as text
  std::optional<std::string> message_id;        // bit 7, shortstr
  std::optional<uint64_t> timestamp;            // bit 6, timestamp
  std::optional<std::string> type;              // bit 5, shortstr
  std::optional<std::string> user_id;           // bit 4, shortstr
  std::optional<std::string> app_id;            // bit 3, shortstr
  std::optional<std::string> cluster_id;        // bit 2, shortstr (reserved in 0-9-1)
  bool operator==(const BasicProperties&) const = default;
};

// Content-header property flags, bit 15 first, in BasicProperties' order.
inline constexpr uint16_t kFlagContentType = 1u << 15;
inline constexpr uint16_t kFlagContentEncoding = 1u << 14;
inline constexpr uint16_t kFlagHeaders = 1u << 13;
inline constexpr uint16_t kFlagDeliveryMode = 1u << 12;
inline constexpr uint16_t kFlagPriority = 1u << 11;
inline constexpr uint16_t kFlagCorrelationId = 1u << 10;
inline constexpr uint16_t kFlagReplyTo = 1u << 9;
inline constexpr uint16_t kFlagExpiration = 1u << 8;
inline constexpr uint16_t kFlagMessageId = 1u << 7;
inline constexpr uint16_t kFlagTimestamp = 1u << 6;
inline constexpr uint16_t kFlagType = 1u << 5;
inline constexpr uint16_t kFlagUserId = 1u << 4;
inline constexpr uint16_t kFlagAppId = 1u << 3;
inline constexpr uint16_t kFlagClusterId = 1u << 2;
inline constexpr uint16_t kUnknownFlags = 0x3;  // bit 1 unused, bit 0 "more flags follow"

// Delivery mode 2 = persistent.
inline constexpr uint8_t kDeliveryPersistent = 2;

}  // namespace haven::mq::amqp
