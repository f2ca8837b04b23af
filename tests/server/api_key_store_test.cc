#include "server/api_key_store.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kKeys[] = R"(# team keys
alice  sk-alice-1234 max_concurrency=4 max_queued_tokens=8192
bob    sk-bob-5678            # no limits
ops    sk-ops-0000 admin
)";

TEST(ApiKeyStoreTest, ParsesNamesLimitsAndAdmin) {
  auto store = ApiKeyStore::Parse(kKeys);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->num_keys(), 3);
  auto alice = (*store)->Authenticate("Bearer sk-alice-1234");
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ((*alice)->name, "alice");
  EXPECT_EQ((*alice)->max_concurrency, 4);
  EXPECT_EQ((*alice)->max_queued_tokens, 8192);
  EXPECT_FALSE((*alice)->admin);
  auto bob = (*store)->Authenticate("bearer   sk-bob-5678 ");
  ASSERT_TRUE(bob.ok()) << bob.status();
  EXPECT_EQ((*bob)->name, "bob");
  EXPECT_EQ((*bob)->max_concurrency, 0);
  auto ops = (*store)->Authenticate("Bearer sk-ops-0000");
  ASSERT_TRUE(ops.ok());
  EXPECT_TRUE((*ops)->admin);
}

TEST(ApiKeyStoreTest, MissingMalformedAndWrongKeysAreUnauthenticated) {
  auto store = *ApiKeyStore::Parse(kKeys);
  for (const char* header :
       {"", "sk-alice-1234", "Basic sk-alice-1234", "Bearer ",
        "Bearer sk-alice-123", "Bearer sk-alice-12345", "Bearer alice"}) {
    const absl::Status status = store->Authenticate(header).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << header;
    // The answer never repeats the key that was sent.
    EXPECT_THAT(std::string(status.message()), Not(HasSubstr("sk-")));
  }
}

TEST(ApiKeyStoreTest, KeysAreKeptOnlyAsDigests) {
  EXPECT_EQ(ApiKeyStore::Sha256("abc"),
            (ApiKeyStore::Digest{
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
                0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
                0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad}));
}

TEST(ApiKeyStoreTest, BadFilesNameTheLine) {
  for (const char* text :
       {"alice\n", "alice k1\nalice k2\n", "alice k1\nbob k1\n",
        "alice k1 max_concurrency=0\n", "alice k1 max_queued_tokens=x\n",
        "alice k1 superuser\n", "# only a comment\n"}) {
    const auto store = ApiKeyStore::Parse(text, "keys.txt");
    EXPECT_EQ(store.status().code(), absl::StatusCode::kInvalidArgument)
        << text;
    EXPECT_THAT(std::string(store.status().message()), HasSubstr("keys.txt"));
  }
}

TEST(ApiKeyStoreTest, ReloadSwapsTheKeysAndKeepsThemOnError) {
  const std::string path =
      ::testing::TempDir() + "/api_keys_" + std::to_string(getpid());
  std::ofstream(path) << "alice old-key\n";
  auto store = ApiKeyStore::Load(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->Authenticate("Bearer old-key").ok());

  std::ofstream(path, std::ios::trunc) << "alice new-key\ncarol c-key\n";
  ASSERT_TRUE((*store)->Reload().ok());
  EXPECT_FALSE((*store)->Authenticate("Bearer old-key").ok());
  EXPECT_TRUE((*store)->Authenticate("Bearer new-key").ok());
  EXPECT_TRUE((*store)->Authenticate("Bearer c-key").ok());

  std::ofstream(path, std::ios::trunc) << "broken\n";
  EXPECT_FALSE((*store)->Reload().ok());
  EXPECT_TRUE((*store)->Authenticate("Bearer new-key").ok());  // kept
  std::remove(path.c_str());
}

}  // namespace
}  // namespace strata
