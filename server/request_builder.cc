#include "server/request_builder.h"

#include <algorithm>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"

namespace strata {
namespace {

constexpr std::array<ChatFormat, 3> kAllChatFormats = {
    ChatFormat::kLlama3, ChatFormat::kChatML, ChatFormat::kMistral};

size_t FormatIndex(ChatFormat format) { return static_cast<size_t>(format); }

// The engine's sampling parameters: the proto's optional fields fall back to
// the engine defaults (engine/step.h), which are the proto's documented ones.
SamplingParams ToEngineSampling(const v1::SamplingParams& s) {
  SamplingParams out;
  if (s.has_temperature()) out.temperature = s.temperature();
  if (s.has_top_k()) out.top_k = s.top_k();
  if (s.has_top_p()) out.top_p = s.top_p();
  if (s.has_min_p()) out.min_p = s.min_p();
  if (s.has_repetition_penalty()) {
    out.repetition_penalty = s.repetition_penalty();
  }
  if (s.has_presence_penalty()) out.presence_penalty = s.presence_penalty();
  if (s.has_frequency_penalty()) {
    out.frequency_penalty = s.frequency_penalty();
  }
  if (s.has_seed()) {
    out.seed = s.seed();
  } else {
    // absl::BitGen is cheap to construct (seeded from a shared pool) and not
    // thread-safe, so each request draws from its own.
    absl::BitGen bitgen;
    out.seed = absl::Uniform<uint64_t>(bitgen);
  }
  out.num_top_logprobs = static_cast<int32_t>(s.top_logprobs());
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RequestBuilder>> RequestBuilder::Create(
    const Options& options) {
  if (options.tokenizer == nullptr) {
    return absl::InvalidArgumentError("RequestBuilder: no tokenizer");
  }
  if (options.vocab_size <= 0 || options.max_model_len < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("RequestBuilder: vocab_size (", options.vocab_size,
                     ") must be positive and max_model_len (",
                     options.max_model_len, ") at least 2"));
  }
  std::unique_ptr<RequestBuilder> builder(new RequestBuilder(options));
  for (ChatFormat format : kAllChatFormats) {
    absl::StatusOr<ChatTemplate> chat_template =
        ChatTemplate::Create(format, *options.tokenizer);
    if (chat_template.ok()) {
      builder->templates_[FormatIndex(format)].emplace(
          *std::move(chat_template));
    } else {
      builder->template_errors_[FormatIndex(format)] = chat_template.status();
    }
  }
  if (options.default_chat_format.has_value()) {
    const size_t index = FormatIndex(*options.default_chat_format);
    if (!builder->templates_[index].has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "chat template ",
          std::string(ChatFormatName(*options.default_chat_format)),
          " cannot be used with this tokenizer: ",
          builder->template_errors_[index].message()));
    }
  }
  return builder;
}

RequestBuilder::RequestBuilder(const Options& options)
    : options_(options),
      validator_(
          RequestValidator::Limits{.vocab_size = options.vocab_size,
                                   .max_model_len = options.max_model_len,
                                   .num_loops = options.num_loops,
                                   .max_prompt_bytes =
                                       options.max_prompt_bytes,
                                   .has_exit_classifier =
                                       options.exit_defaults.has_classifier()}) {}

absl::StatusOr<PreparedRequest> RequestBuilder::BuildCompletion(
    const v1::CompletionRequest& request) const {
  if (absl::Status st = validator_.ValidateCompletion(request); !st.ok()) {
    return st;
  }
  std::vector<TokenId> prompt;
  if (request.prompt_case() == v1::CompletionRequest::kText) {
    const bool add_special_tokens =
        request.has_add_special_tokens() ? request.add_special_tokens() : true;
    // Tokenizing stops once the prompt is known to be too long.
    absl::StatusOr<std::vector<TokenId>> ids = options_.tokenizer->Encode(
        request.text(), add_special_tokens, MaxPromptTokens());
    if (!ids.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt.text: ", ids.status().message()));
    }
    prompt = *std::move(ids);
  } else {
    prompt.assign(request.token_ids().ids().begin(),
                  request.token_ids().ids().end());
  }
  return Finish(std::move(prompt), request.sampling(), request.priority());
}

absl::StatusOr<PreparedRequest> RequestBuilder::BuildChat(
    const v1::ChatRequest& request) const {
  if (absl::Status st = validator_.ValidateChat(request); !st.ok()) return st;
  std::optional<ChatFormat> format = options_.default_chat_format;
  if (!request.chat_template().empty()) {
    absl::StatusOr<ChatFormat> named = ParseChatFormat(request.chat_template());
    if (!named.ok()) {  // the validator already checked the name
      return absl::InvalidArgumentError(
          absl::StrCat("chat_template: ", named.status().message()));
    }
    format = *named;
  }
  if (!format.has_value()) {
    return absl::FailedPreconditionError(
        "chat_template: the model's tokenizer_config.json has no chat "
        "template Strata recognises; name one (llama3, chatml or mistral)");
  }
  const std::optional<ChatTemplate>& chat_template =
      templates_[FormatIndex(*format)];
  if (!chat_template.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("chat_template: ", std::string(ChatFormatName(*format)),
                     " cannot be used with this model's tokenizer: ",
                     template_errors_[FormatIndex(*format)].message()));
  }

  std::vector<ChatMessage> messages;
  messages.reserve(request.messages_size());
  for (const v1::ChatMessage& message : request.messages()) {
    messages.push_back(ChatMessage{message.role(), message.content()});
  }
  absl::StatusOr<std::string> text = chat_template->Render(messages);
  if (!text.ok()) return text.status();  // names messages[i]
  // The rendered text spells out its special tokens (BOS included).
  absl::StatusOr<std::vector<TokenId>> prompt = options_.tokenizer->Encode(
      *text, /*add_special_tokens=*/false, MaxPromptTokens());
  if (!prompt.ok()) return prompt.status();
  return Finish(*std::move(prompt), request.sampling(), request.priority());
}

absl::StatusOr<PreparedRequest> RequestBuilder::Finish(
    std::vector<TokenId> prompt, const v1::SamplingParams& sampling,
    int32_t priority) const {
  if (absl::Status st = validator_.ValidatePromptLength(prompt.size());
      !st.ok()) {
    return st;
  }
  PreparedRequest out;
  out.sampling = ToEngineSampling(sampling);
  const int64_t requested =
      sampling.has_max_tokens() ? sampling.max_tokens() : kDefaultMaxTokens;
  const int64_t room =
      static_cast<int64_t>(options_.max_model_len) - prompt.size();
  out.max_tokens = static_cast<int32_t>(std::min(requested, room));
  out.prompt = std::move(prompt);

  out.stop_token_ids.assign(sampling.stop_token_ids().begin(),
                            sampling.stop_token_ids().end());
  if (!sampling.ignore_eos()) {
    for (TokenId eos : options_.tokenizer->eos_token_ids()) {
      out.stop_token_ids.push_back(eos);
    }
  }
  std::sort(out.stop_token_ids.begin(), out.stop_token_ids.end());
  out.stop_token_ids.erase(
      std::unique(out.stop_token_ids.begin(), out.stop_token_ids.end()),
      out.stop_token_ids.end());

  out.stop_strings.assign(sampling.stop().begin(), sampling.stop().end());
  out.logprobs = sampling.logprobs();
  out.priority = priority;
  out.n = sampling.has_n() ? static_cast<int32_t>(sampling.n()) : 1;
  // Unset measure / threshold: the model's defaults (docs/api.md).
  const ExitDefaults& defaults = options_.exit_defaults;
  out.exit.confidence = defaults.DefaultConfidence();
  if (sampling.has_exit_confidence()) {
    switch (sampling.exit_confidence()) {
      case v1::EXIT_CONFIDENCE_MARGIN:
        out.exit.confidence = ExitConfidence::kMargin;
        break;
      case v1::EXIT_CONFIDENCE_SATURATION:
        out.exit.confidence = ExitConfidence::kSaturation;
        break;
      case v1::EXIT_CONFIDENCE_CLASSIFIER:
        out.exit.confidence = ExitConfidence::kClassifier;
        break;
      default:
        out.exit.confidence = ExitConfidence::kMaxProb;
        break;
    }
  }
  out.exit.threshold = sampling.has_exit_threshold()
                           ? sampling.exit_threshold()
                           : defaults.DefaultThreshold(out.exit.confidence);
  if (options_.num_loops < 2) out.exit.threshold = 1.0f;
  if (sampling.has_exit_min_loops()) {
    out.exit.min_loops = static_cast<int32_t>(sampling.exit_min_loops());
  }
  return out;
}

}  // namespace strata
