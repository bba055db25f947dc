#include "base/base64.h"

#include <gtest/gtest.h>

namespace haven {
namespace {

TEST(Base64, EncodesRfc4648Vectors) {
  EXPECT_EQ(Base64Encode(""), "");
  EXPECT_EQ(Base64Encode("f"), "Zg==");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_EQ(Base64Encode("foo"), "Zm9v");
  EXPECT_EQ(Base64Encode("foob"), "Zm9vYg==");
  EXPECT_EQ(Base64Encode("fooba"), "Zm9vYmE=");
  EXPECT_EQ(Base64Encode("foobar"), "Zm9vYmFy");
}

TEST(Base64, DecodesPaddedAndUnpadded) {
  EXPECT_EQ(*Base64Decode(""), "");
  EXPECT_EQ(*Base64Decode("Zg=="), "f");
  EXPECT_EQ(*Base64Decode("Zg"), "f");
  EXPECT_EQ(*Base64Decode("Zm8="), "fo");
  EXPECT_EQ(*Base64Decode("Zm8"), "fo");
  EXPECT_EQ(*Base64Decode("Zm9vYmFy"), "foobar");
}

TEST(Base64, RoundTripsEveryByte) {
  std::string all;
  for (int i = 0; i < 256; ++i) all += char(i);
  for (size_t len = 0; len <= all.size(); len += 37) {
    std::string part = all.substr(0, len);
    auto back = Base64Decode(Base64Encode(part));
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, part);
  }
  EXPECT_EQ(Base64Encode("\xff\xfe\xfd"), "//79");
}

TEST(Base64, RejectsBadInput) {
  EXPECT_FALSE(Base64Decode("Zm9v!").ok());      // outside the alphabet
  EXPECT_FALSE(Base64Decode("Zm9v YmFy").ok());  // whitespace
  EXPECT_FALSE(Base64Decode("Zm9vY").ok());      // 6 bits left over
  EXPECT_FALSE(Base64Decode("Zg=").ok());        // padding that does not complete a quad
  EXPECT_FALSE(Base64Decode("Z=g=").ok());       // '=' in the middle
  EXPECT_FALSE(Base64Decode("Zg===").ok());      // too much padding
  EXPECT_FALSE(Base64Decode("====").ok());
  EXPECT_FALSE(Base64Decode("Zm-_").ok());  // URL alphabet is not accepted
  EXPECT_EQ(Base64Decode("ab\x80").status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace haven
