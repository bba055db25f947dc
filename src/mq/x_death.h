// Broker-set headers on a message's raw AMQP properties (x-death on dead-lettering,
// x-delivery-count on redelivery), written as RabbitMQ writes them. Pure: bytes in, bytes out.
//
// Both functions edit only the headers table (and, on dead-lettering, the expiration property, as
// RabbitMQ does): every other property and every other header entry is copied byte for byte, in
// its order and with its wire type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "mq/amqp_types.h"
#include "mq/mq.pb.h"

namespace haven::mq {

// x-death is bounded: a message that cycles through many queues (or a publisher that sends a huge
// x-death of its own) keeps its most recent entries only.
inline constexpr size_t kMaxXDeathEntries = 100;
inline constexpr size_t kMaxXDeathBytes = size_t{32} * 1024;  // the encoded array

// One dead-lettering event, as x-death records it.
struct DeathEvent {
  std::string queue;                      // the queue the message died in
  std::string reason;                     // rejected, expired, maxlen, delivery_limit
  std::string exchange;                   // the exchange it had been published to
  std::vector<std::string> routing_keys;  // and its routing key(s)
  uint64_t time_unix_s = 0;               // from the command, never a clock
};

// RabbitMQ's name for a dead-letter reason ("rejected", "expired", "maxlen", "delivery_limit").
std::string_view DeathReasonName(pb::DeadLetterReason reason);

// The properties after one more death: in x-death, the (queue, reason) entry's count is
// incremented and the entry moved first, or a new entry (count 1) is prepended; an x-death that
// is not an array is replaced, as RabbitMQ does. x-first-death-{queue,reason,exchange} are set
// if absent, x-last-death-* always. A per-message expiration is removed and kept in the new
// entry's original-expiration (so the message does not expire again where it goes).
// InvalidArgument if raw_properties (property flags + list) is malformed: keep them as they are.
Result<std::string> AddDeath(std::string_view raw_properties, const DeathEvent& death);

// The properties with header `name` = `value`: an existing entry of that name is replaced where it
// is, else one is appended (a headers table is added when there is none). Errors as AddDeath.
Result<std::string> WithHeader(std::string_view raw_properties, std::string_view name,
                               const amqp::FieldValue& value);

}  // namespace haven::mq
