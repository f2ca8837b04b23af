// Arbitrary bytes as tokenizer.json (next to tiny-llama's
// tokenizer_config.json and config.json): loading must fail cleanly or give
// a tokenizer that encodes and decodes without crashing.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  static const bool copied = [] {
    for (const char* file : {"tokenizer_config.json", "config.json"}) {
      fs::copy_file(strata::fuzz::TestDataDir("tiny-llama") + "/" + file,
                    strata::fuzz::ScratchDir() / file,
                    fs::copy_options::overwrite_existing);
    }
    return true;
  }();
  (void)copied;
  strata::fuzz::WriteScratch("tokenizer.json", data, size);
  absl::StatusOr<std::unique_ptr<strata::Tokenizer>> tokenizer =
      strata::Tokenizer::FromDirectory(strata::fuzz::ScratchDir().string());
  if (!tokenizer.ok()) return 0;
  absl::StatusOr<std::vector<strata::TokenId>> ids =
      (*tokenizer)->Encode("Hello wörld 123 <|x|>\n\t🙂", true);
  if (ids.ok()) (void)(*tokenizer)->Decode(*ids, false);
  return 0;
}
