// Topic-exchange pattern matching as RabbitMQ does it: words split by '.', `*` matches exactly one
// word, `#` zero or more. An empty routing key has no words.
#pragma once

#include <string_view>

namespace haven::mq {

// True when `routing_key` matches the binding `pattern`. Inputs are AMQP short strings (at most
// 255 bytes, so at most 128 words); longer inputs are matched too, in O(words^2) time.
bool TopicMatches(std::string_view pattern, std::string_view routing_key);

}  // namespace haven::mq
