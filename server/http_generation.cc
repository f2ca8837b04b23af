#include "server/http_generation.h"

#include <utility>

namespace strata {

void HttpGeneration::Part::OnChunk(v1::CompletionChunk chunk) {
  chunk.set_index(chunk.index() + index_offset);
  owner.Queue(std::move(chunk));
}

void HttpGeneration::Part::OnComplete(v1::CompletionChunk last,
                                      absl::Status status) {
  last.set_index(last.index() + index_offset);
  owner.Complete(std::move(last), status);
}

HttpGeneration::HttpGeneration(Scheduler& scheduler, Metrics* metrics,
                               OutputWorker* worker, const Tokenizer& tokenizer,
                               std::function<void()> wake)
    : scheduler_(scheduler),
      metrics_(metrics),
      worker_(worker),
      tokenizer_(tokenizer),
      wake_(std::move(wake)) {}

HttpGeneration::~HttpGeneration() {
  // After Detach no listener of ours is called again, so the parts may go.
  for (auto& part : parts_) part->generation.Detach();
}

absl::Status HttpGeneration::Submit(std::vector<PreparedRequest> prompts,
                                    int32_t n, const ApiKey& key,
                                    absl::Time deadline) {
  parts_.reserve(prompts.size());
  for (size_t p = 0; p < prompts.size(); ++p) {
    parts_.push_back(std::make_unique<Part>(
        *this, scheduler_, metrics_, worker_, static_cast<uint32_t>(p * n)));
  }
  for (size_t p = 0; p < prompts.size(); ++p) {
    absl::Status status = parts_[p]->generation.Submit(
        std::move(prompts[p]), key, tokenizer_, parts_[p].get(), deadline);
    if (!status.ok()) {
      // A batch is answered whole or not at all.
      for (size_t q = 0; q < p; ++q) {
        parts_[q]->generation.Detach();
        parts_[q]->generation.Cancel(status);
      }
      parts_.clear();
      return status;
    }
  }
  return absl::OkStatus();
}

void HttpGeneration::Cancel(const absl::Status& status) {
  for (auto& part : parts_) part->generation.Cancel(status);
}

HttpGeneration::Output HttpGeneration::Take() {
  absl::MutexLock lock(&mu_);
  Output out = std::move(pending_);
  pending_.chunks.clear();
  // A completed generation stays completed for a later Take.
  pending_.complete = out.complete;
  pending_.status = out.status;
  pending_.usage = out.usage;
  return out;
}

void HttpGeneration::Queue(v1::CompletionChunk chunk) {
  {
    absl::MutexLock lock(&mu_);
    QueueChunk(std::move(chunk), pending_.chunks);
  }
  wake_();
}

void HttpGeneration::Complete(v1::CompletionChunk last,
                              const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    const v1::Usage usage = last.usage();
    last.clear_usage();  // the request's usage is reported once, summed
    v1::Usage& total = pending_.usage;
    total.set_prompt_tokens(total.prompt_tokens() + usage.prompt_tokens());
    total.set_completion_tokens(total.completion_tokens() +
                                usage.completion_tokens());
    total.set_cached_prompt_tokens(total.cached_prompt_tokens() +
                                   usage.cached_prompt_tokens());
    if (status.ok()) {
      QueueChunk(std::move(last), pending_.chunks);
    } else if (pending_.status.ok()) {
      pending_.status = status;
    }
    ++num_complete_;
    pending_.complete = num_complete_ == parts_.size();
  }
  wake_();
}

}  // namespace strata
