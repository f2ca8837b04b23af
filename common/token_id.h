// TokenId: a vocabulary index. Shared by text/ (the tokenizer produces and
// consumes ids) and engine/ (the model reads and samples them), which must
// not include each other.
#ifndef STRATA_COMMON_TOKEN_ID_H_
#define STRATA_COMMON_TOKEN_ID_H_

#include <cstdint>

namespace strata {

using TokenId = int32_t;

}  // namespace strata

#endif  // STRATA_COMMON_TOKEN_ID_H_
