#include "mq/topic.h"

#include <vector>

namespace haven::mq {
namespace {

std::vector<std::string_view> SplitWords(std::string_view s) {
  std::vector<std::string_view> words;
  if (s.empty()) return words;  // RabbitMQ: "" has no words, so only "#" matches it
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    if (dot == std::string_view::npos) {
      words.push_back(s.substr(start));
      return words;
    }
    words.push_back(s.substr(start, dot - start));
    start = dot + 1;
  }
}

}  // namespace

// Dynamic programming over (pattern words consumed, key words consumed) instead of backtracking,
// so a pattern like "#.#.#.#.x" cannot take exponential time.
bool TopicMatches(std::string_view pattern, std::string_view routing_key) {
  const std::vector<std::string_view> p = SplitWords(pattern);
  const std::vector<std::string_view> k = SplitWords(routing_key);
  // row[j]: the first i pattern words match the first j key words.
  std::vector<char> row(k.size() + 1, 0), next(k.size() + 1, 0);
  row[0] = 1;
  for (size_t i = 0; i < p.size(); ++i) {
    std::fill(next.begin(), next.end(), 0);
    for (size_t j = 0; j <= k.size(); ++j) {
      if (p[i] == "#") {
        // '#' takes zero words (row[j]) or one more word after matching j-1 (next[j-1]).
        next[j] = row[j] || (j > 0 && next[j - 1]);
      } else if (j > 0 && row[j - 1]) {
        next[j] = p[i] == "*" || p[i] == k[j - 1];
      }
    }
    row.swap(next);
  }
  return row[k.size()] != 0;
}

}  // namespace haven::mq
