// Helpers shared by the libFuzzer targets in tests/fuzz: fixtures loaded
// once per process, and scratch files for parsers that take a path.
#ifndef STRATA_TESTS_FUZZ_FUZZ_UTIL_H_
#define STRATA_TESTS_FUZZ_FUZZ_UTIL_H_

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "common/logging.h"
#include "text/tokenizer.h"

namespace strata::fuzz {

// tests/data/<name> in the source tree.
inline std::string TestDataDir(std::string_view name) {
  return std::string(STRATA_SOURCE_DIR) + "/tests/data/" + std::string(name);
}

// The tokenizer of tests/data/<name>, loaded once (a fixture: a failure to
// load it is a broken checkout, not a finding).
inline const Tokenizer& FixtureTokenizer(std::string_view name) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::FromDirectory(TestDataDir(name));
  STRATA_CHECK(tokenizer.ok()) << tokenizer.status();
  return *tokenizer->release();  // lives for the process
}

// A private scratch folder of this process, removed at exit.
inline const std::filesystem::path& ScratchDir() {
  static const std::filesystem::path* dir = [] {
    auto* path = new std::filesystem::path(
        std::filesystem::temp_directory_path() /
        ("strata-fuzz-" + std::to_string(getpid())));
    std::filesystem::create_directories(*path);
    std::atexit([] { std::filesystem::remove_all(ScratchDir()); });
    return path;
  }();
  return *dir;
}

// Writes `data` to ScratchDir()/name and returns the path.
inline std::string WriteScratch(const std::string& name, const uint8_t* data,
                                size_t size) {
  const std::filesystem::path path = ScratchDir() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data),
            static_cast<std::streamsize>(size));
  return path.string();
}

}  // namespace strata::fuzz

#endif  // STRATA_TESTS_FUZZ_FUZZ_UTIL_H_
