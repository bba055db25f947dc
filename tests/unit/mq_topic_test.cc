#include "mq/topic.h"

#include <string>

#include <gtest/gtest.h>

namespace haven::mq {
namespace {

TEST(TopicMatches, LiteralWords) {
  EXPECT_TRUE(TopicMatches("a.b.c", "a.b.c"));
  EXPECT_FALSE(TopicMatches("a.b.c", "a.b"));
  EXPECT_FALSE(TopicMatches("a.b", "a.b.c"));
  EXPECT_FALSE(TopicMatches("a.b.c", "a.b.d"));
  EXPECT_FALSE(TopicMatches("ab", "a.b"));
}

TEST(TopicMatches, StarIsExactlyOneWord) {
  EXPECT_TRUE(TopicMatches("*.orange.*", "quick.orange.rabbit"));
  EXPECT_FALSE(TopicMatches("*.orange.*", "orange"));
  EXPECT_FALSE(TopicMatches("*.orange.*", "quick.orange.male.rabbit"));
  EXPECT_TRUE(TopicMatches("*", "a"));
  EXPECT_FALSE(TopicMatches("*", ""));
  EXPECT_FALSE(TopicMatches("*", "a.b"));
  EXPECT_TRUE(TopicMatches("a.*.c", "a..c"));  // an empty word is a word
}

TEST(TopicMatches, HashIsZeroOrMoreWords) {
  EXPECT_TRUE(TopicMatches("#", ""));
  EXPECT_TRUE(TopicMatches("#", "a"));
  EXPECT_TRUE(TopicMatches("#", "a.b.c"));
  EXPECT_TRUE(TopicMatches("lazy.#", "lazy"));
  EXPECT_TRUE(TopicMatches("lazy.#", "lazy.orange.male.rabbit"));
  EXPECT_FALSE(TopicMatches("lazy.#", "quick.lazy"));
  EXPECT_TRUE(TopicMatches("#.rabbit", "rabbit"));
  EXPECT_TRUE(TopicMatches("a.#.b", "a.b"));
  EXPECT_TRUE(TopicMatches("a.#.b", "a.x.y.b"));
  EXPECT_FALSE(TopicMatches("a.#.b", "a.x.y.c"));
  EXPECT_TRUE(TopicMatches("#.*", "a"));
  EXPECT_FALSE(TopicMatches("#.*", ""));
  EXPECT_TRUE(TopicMatches("*.#.*", "a.b"));
  EXPECT_FALSE(TopicMatches("*.#.*", "a"));
}

// The RabbitMQ tutorial's bindings and keys.
TEST(TopicMatches, RabbitTutorial) {
  EXPECT_TRUE(TopicMatches("*.*.rabbit", "quick.orange.rabbit"));
  EXPECT_TRUE(TopicMatches("lazy.#", "lazy.orange.elephant"));
  EXPECT_FALSE(TopicMatches("*.orange.*", "lazy.brown.fox"));
  EXPECT_FALSE(TopicMatches("*.*.rabbit", "quick.orange.male.rabbit"));
  EXPECT_TRUE(TopicMatches("lazy.#", "lazy.orange.male.rabbit"));
}

TEST(TopicMatches, EmptyPatternMatchesOnlyEmptyKey) {
  EXPECT_TRUE(TopicMatches("", ""));
  EXPECT_FALSE(TopicMatches("", "a"));
}

TEST(TopicMatches, ManyHashesStayFast) {
  std::string pattern, key;
  for (int i = 0; i < 60; ++i) pattern += "#.";
  pattern += "z";
  for (int i = 0; i < 120; ++i) key += "a.";
  key += "b";
  EXPECT_FALSE(TopicMatches(pattern, key));  // exponential with naive backtracking
  key.back() = 'z';
  EXPECT_TRUE(TopicMatches(pattern, key));
}

}  // namespace
}  // namespace haven::mq
