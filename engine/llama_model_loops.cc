// LlamaModel, continued: the step over loop ranges (recursive models), kept
// apart from llama_model.cc (weights, cache and the layer block) so each file
// reads in one sitting. docs/engine.md, "Recursive forward", has the design;
// in short:
//
//   1. inputs: embeddings (loop_begin 0) or kept states (HiddenStateStore)
//      into one state buffer [num_rows, hidden], in LoopPlanner slot order;
//   2. rounds: the K layers over the active rows, each at its own loop
//      (segmented LoRA, per-loop KV); after each round, the exit rule for
//      items with ExitParams: max_prob / margin from the exit logits
//      (LM head, one confidence per row to the host), saturation /
//      classifier from the residual rows alone (the LM head then runs only
//      for the rows that exit);
//   3. propagate policy: K/V of the loops exited rows skipped, from h_exit;
//   4. logits: of finished sample items (exits reuse their exit logits), or
//      of the rows asked for;
//   5. the store: keep unfinished states (and recompute exits), drop the
//      consumed ones.
//
// A plain model (N = 1) takes one round with every row, no gathers, exits or
// store traffic: the same ops in the same order as a non-recursive forward.
#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "engine/llama_model.h"

namespace strata {
namespace {

}  // namespace

std::span<const int32_t> LlamaModel::Iota(int32_t begin, int32_t count) {
  iota_.resize(static_cast<size_t>(count));
  std::iota(iota_.begin(), iota_.end(), begin);
  return iota_;
}

absl::Status LlamaModel::ValidateLoops(std::span<const WorkItem> items) const {
  const int32_t num_loops = config_.num_loops;
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& item = items[i];
    auto error = [&](auto&&... parts) {
      return absl::InvalidArgumentError(absl::StrCat(
          "work item ", i, " (request ", item.request_id, "): ", parts...));
    };
    if (item.loop_begin < 0 || item.loop_begin >= num_loops) {
      return error("loop_begin ", item.loop_begin, " outside [0, ", num_loops,
                   ")");
    }
    if (item.loop_end != -1 &&
        (item.loop_end <= item.loop_begin || item.loop_end > num_loops)) {
      return error("loop_end ", item.loop_end, " is not -1 or in (",
                   item.loop_begin, ", ", num_loops, "]");
    }
    if (item.exit != nullptr) {
      if (item.tokens.size() != 1) {
        return error("early exit needs a single token, got ",
                     item.tokens.size(), " tokens");
      }
      if (absl::Status s = ValidateExitParams(*item.exit, num_loops); !s.ok()) {
        return error(s.message());
      }
      if (item.exit->confidence == ExitConfidence::kClassifier &&
          exit_classifier_.empty()) {
        return error("exit confidence 'classifier' but the model has no exit "
                     "classifier");
      }
    }
    if (item.kv_fill &&
        (item.sample || item.exit != nullptr || item.loop_begin == 0)) {
      return error(
          "a kv_fill item must not sample or exit and needs "
          "loop_begin > 0");
    }
    if (item.loop_begin > 0) {
      const HiddenStateStore::Entry* entry =
          store_.Find(item.request_id, item.start_position);
      if (entry == nullptr) {
        return error("loop_begin ", item.loop_begin,
                     " but no hidden state is kept for position ",
                     item.start_position);
      }
      if (entry->num_tokens != static_cast<int32_t>(item.tokens.size()) ||
          entry->loops_done != item.loop_begin) {
        return error("the state kept for position ", item.start_position,
                     " has ", entry->num_tokens, " tokens after ",
                     entry->loops_done, " loops, but the item has ",
                     item.tokens.size(), " tokens and loop_begin ",
                     item.loop_begin);
      }
      if (entry->exit_state != item.kv_fill) {
        return error(entry->exit_state
                         ? "the kept state is an early exit's: only a kv_fill "
                           "item may continue it"
                         : "kv_fill item but the kept state is not an early "
                           "exit's");
      }
    }
  }

  // Items of one request in one step, by position (recursive models; a
  // plain model runs one round, so any order works): an item reads the K/V
  // of its request's earlier positions at its loops, so the item holding
  // those positions must write each such loop no later in the step (an
  // earlier or the same round: its loop_begin is not smaller, its loop_end
  // not smaller), may exit only where the later one reads no loop past its
  // first (propagated K/V are written after the rounds: a prompt token
  // that exits in a per-loop step, docs/engine.md), and positions must not
  // overlap.
  if (num_loops == 1) return absl::OkStatus();
  absl::InlinedVector<int32_t, 64> order(items.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    if (items[a].request_id != items[b].request_id) {
      return items[a].request_id < items[b].request_id;
    }
    return items[a].start_position < items[b].start_position;
  });
  const int32_t n = config_.num_loops;
  for (size_t j = 1; j < order.size(); ++j) {
    const WorkItem& x = items[order[j - 1]];
    const WorkItem& y = items[order[j]];
    if (x.request_id != y.request_id) continue;
    const int32_t x_end = x.loop_end < 0 ? n : x.loop_end;
    const int32_t y_end = y.loop_end < 0 ? n : y.loop_end;
    if (x.start_position + static_cast<int64_t>(x.tokens.size()) >
            y.start_position ||
        x.sample || y.loop_begin > x.loop_begin || y_end > x_end ||
        (x.exit != nullptr && y_end > x.loop_begin + 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "work items ", order[j - 1], " and ", order[j], " (request ",
          x.request_id, ", positions ", x.start_position, " and ",
          y.start_position,
          "): a later item of a request needs the earlier one not to sample, "
          "not to overlap it, to cover its loops no later, and, if it may "
          "exit, to run no loop past the earlier one's first (loop ranges [",
          x.loop_begin, ", ", x_end, ") and [", y.loop_begin, ", ", y_end,
          "))"));
    }
  }
  return absl::OkStatus();
}

std::optional<StepGraphKey> LlamaModel::GraphKeyOf(
    std::span<const WorkItem> items, std::span<const int32_t> logit_rows,
    bool sample_mode, int64_t num_rows) const {
  StepGraphKey key;
  size_t longest_table = 1;
  for (const WorkItem& item : items) {
    const bool all_loops =
        item.loop_end == -1 || item.loop_end == config_.num_loops;
    if (item.tokens.size() != 1 || item.loop_begin != 0 || !all_loops ||
        item.exit != nullptr || item.kv_fill || propagation_pending_) {
      return std::nullopt;
    }
    longest_table = std::max(longest_table, item.block_table.size());
    key.num_logit_rows += item.sample ? 1 : 0;
  }
  key.num_rows = static_cast<int32_t>(num_rows);
  if (!sample_mode) {
    key.num_logit_rows = static_cast<int32_t>(logit_rows.size());
  }
  key.table_stride = static_cast<int32_t>(std::bit_ceil(longest_table));
  key.sample_mode = sample_mode;
  return key;
}

absl::Status LlamaModel::RunStep(std::span<const WorkItem> items,
                                 std::span<const int32_t> logit_rows,
                                 bool sample_mode, StepOutput* out) {
  // The previous step's host task, before this step reads the cache or
  // plans into the task's tensors.
  RETURN_IF_ERROR(JoinPropagation());
  bool rerun = false;
  absl::Status status =
      RunStepOnce(items, logit_rows, sample_mode, true, &rerun, out);
  if (rerun) {
    status = RunStepOnce(items, logit_rows, sample_mode, false, &rerun, out);
  }
  // A failed step's plan is dropped: its items fail, and their requests end.
  if (!status.ok() || !propagation_planned_) {
    propagation_planned_ = false;
    return status;
  }
  propagation_planned_ = false;
  if (items.size() == 1) {
    // A lone item's K/V joins the next step (see Step()): its sampling is
    // too short to hide a host task's dozen ops, which the step would wait
    // for (engine alone, 1 sequence: exits 1.72x full depth, 1.66x with
    // the task; docs/recursive-models.md).
    propagation_pending_ = true;
    return absl::OkStatus();
  }
  // With more items, a host task (Backend::StartHostTask; JoinPropagation()
  // joins it) beside the runner's sampling, which hides it; in the next
  // step's first round its rows would lengthen the step (8 sequences: 5%
  // less of full depth's speed). Until it is joined nothing reads or
  // writes the skipped loops' K/V or the task's tensors.
  const auto start = std::chrono::steady_clock::now();
  propagation_running_ = true;
  backend_->StartHostTask([this] { propagation_status_ = PropagateKv(); });
  timings_.propagation.nanoseconds += StepTimings::NanosecondsSince(start);
  return absl::OkStatus();
}

absl::Status LlamaModel::RunStepOnce(std::span<const WorkItem> items,
                                     std::span<const int32_t> logit_rows,
                                     bool sample_mode, bool allow_graph,
                                     bool* rerun, StepOutput* out) {
  *rerun = false;
  propagation_planned_ = false;
  RETURN_IF_ERROR(Validate(items));
  const int32_t num_loops = config_.num_loops;
  // The planner, the round and the checks keep their memory across steps.
  LoopPlanner& planner = planner_;
  planner.Reset(items, num_loops, options_.block_size);
  const int64_t n = planner.num_rows();
  for (int32_t row : logit_rows) {
    if (row < 0 || row >= n) {
      return absl::InternalError(
          absl::StrCat("logit row ", row, " outside the batch of ", n));
    }
  }
  out->items.assign(items.size(), ItemProgress{});
  out->logits = nullptr;
  out->logit_items.clear();
  if (n == 0) return FinishStep();  // no round to take the pending K/V

  const int64_t hidden = config_.hidden_size;
  const int64_t vocab = config_.vocab_size;
  Backend& b = *backend_;

  // Steps 1-4 of a decode step may be one step graph; an early return in
  // between drops what was recorded.
  std::optional<StepGraphKey> graph_key;
  if (allow_graph) graph_key = GraphKeyOf(items, logit_rows, sample_mode, n);
  struct GraphBracket {
    Backend* backend = nullptr;  // set while the bracket is open
    ~GraphBracket() {
      if (backend != nullptr) backend->EndStepGraph(false).IgnoreError();
    }
  } bracket;
  if (graph_key.has_value() && b.BeginStepGraph(*graph_key)) {
    bracket.backend = &b;
  }

  // 1. Inputs, in slot order: the loop_begin 0 items come first.
  absl::StatusOr<Tensor> state_or = Rows(x_, n, hidden);
  if (!state_or.ok()) return state_or.status();
  Tensor state = *std::move(state_or);  // the residual stream of every row
  Tensor other;                         // x2_, for row reorders
  std::vector<TokenId>& ids = step_ids_;
  ids.clear();
  for (int32_t i : planner.order()) {
    if (items[i].loop_begin != 0) break;
    ids.insert(ids.end(), items[i].tokens.begin(), items[i].tokens.end());
  }
  if (!ids.empty()) {
    Tensor embedded = state.Rows(0, static_cast<int64_t>(ids.size()));
    b.Embedding(embed_tokens_, ids, &embedded);
  }
  for (int32_t i : planner.order()) {
    if (items[i].loop_begin == 0) continue;
    const HiddenStateStore::Entry* entry =
        store_.Find(items[i].request_id, items[i].start_position);
    Tensor dst = state.Rows(planner.item(i).slot, entry->num_tokens);
    b.GatherRows(entry->state, Iota(0, entry->num_tokens), &dst);
  }

  // Sample mode: one logits row per sample item at most.
  int32_t num_sample = 0;
  for (const WorkItem& item : items) num_sample += item.sample ? 1 : 0;
  Tensor logits_out;
  // The states of finished rows, by logits row: one LM head over
  // [head_first, next_logit) when the step ends (or before a softmax exit
  // takes the next logits row), not one per round with exits and another
  // for the last loop's rows. Rows are computed alike in any batch, so the
  // bits are those of separate heads, and the weights are read once.
  Tensor finished;
  if (sample_mode && num_sample > 0) {
    absl::StatusOr<Tensor> t = Rows(logits_, num_sample, vocab);
    if (!t.ok()) return t.status();
    logits_out = *std::move(t);
    absl::StatusOr<Tensor> f = Rows(finished_, num_sample, hidden);
    if (!f.ok()) return f.status();
    finished = *std::move(f);
  }
  int32_t next_logit = 0;
  int32_t head_first = 0;
  auto finish_head = [&] {
    const int64_t r = next_logit - head_first;
    if (r == 0) return;
    const auto head_start = std::chrono::steady_clock::now();
    Tensor dst = logits_out.Rows(head_first, r);
    HeadOfStates(finished.Rows(head_first, r), &dst);
    timings_.head += {StepTimings::NanosecondsSince(head_start), r};
    head_first = next_logit;
  };
  // Early exits of this step.
  std::vector<int32_t>& exited = exited_;
  std::vector<int32_t>& exit_loops = exit_loops_;
  exited.clear();
  exit_loops.clear();

  // 2. Rounds.
  LoopPlanner::Round& round = round_;
  ExitChecks& checks = checks_;
  while (planner.NextRound(&round)) {
    if (!round.gather.empty()) {
      if (other.empty()) {
        absl::StatusOr<Tensor> t = Rows(x2_, n, hidden);
        if (!t.ok()) return t.status();
        other = *std::move(t);
      }
      b.GatherRows(state, round.gather, &other);
      std::swap(state, other);
    }
    // Which items the exit rule sees after this round, and for saturation
    // their states before it. check_start..check_end and decide_start on
    // time the exit decision (StepTimings::exit_checks).
    using Clock = std::chrono::steady_clock;
    const Clock::time_point check_start = Clock::now();
    checks.Plan(items, round, planner, num_loops);
    Tensor prev;
    if (!checks.saturation_slots.empty()) {
      absl::StatusOr<Tensor> t = Rows(
          exit_prev_, static_cast<int64_t>(checks.hidden_items.size()), hidden);
      if (!t.ok()) return t.status();
      prev = *std::move(t);
      // Rows of classifier items stay unread.
      Tensor dst = prev.Rows(0, static_cast<int64_t>(checks.saturation_slots.size()));
      b.GatherRows(state, checks.saturation_slots, &dst);
    }
    const Clock::time_point check_end = Clock::now();
    Tensor x = state.Rows(0, round.num_rows);
    // The previous step's propagated K/V joins the first round.
    RETURN_IF_ERROR(RunBlock(round, &x, propagation_pending_));
    propagation_pending_ = false;
    timings_.loops +=
        {StepTimings::NanosecondsSince(check_end), round.num_rows};
    planner.FinishRound(round);
    if (checks.empty()) continue;
    Clock::duration check_time = check_end - check_start;
    Clock::time_point decide_start = Clock::now();

    auto decide = [&](int32_t i, float confidence) {
      ItemProgress& progress = out->items[i];
      progress.exit_confidence = confidence;
      const int32_t loop = planner.item(i).next_loop - 1;
      if (!items[i].exit->Exits(loop, confidence)) return false;
      planner.Exit(i);
      exited.push_back(i);
      exit_loops.push_back(loop);
      progress.exit_loop = loop;
      return true;
    };

    // Hidden-state measures: O(hidden) per row; the LM head runs for the
    // rows that exit only, straight into their logits rows.
    if (!checks.hidden_items.empty()) {
      const size_t c = checks.hidden_items.size();
      checks.confidences.resize(c);
      RETURN_IF_ERROR(b.HiddenExitConfidences(
          state, checks.hidden_rows, prev, exit_classifier_,
          checks.hidden_loops, checks.hidden_kinds, config_.rms_norm_eps,
          checks.confidences));
      checks.head_rows.clear();
      for (size_t j = 0; j < c; ++j) {
        const int32_t i = checks.hidden_items[j];
        if (!decide(i, checks.confidences[j]) || !sample_mode ||
            !items[i].sample) {
          continue;
        }
        checks.head_rows.push_back(checks.hidden_rows[j]);
        out->logit_items.push_back(i);
        out->items[i].logits_row = next_logit++;
      }
      if (!checks.head_rows.empty()) {
        // The exiting rows' LM head is the token's, not the decision's: their
        // states wait in `finished` for the step's head.
        const Clock::time_point head_start = Clock::now();
        check_time += head_start - decide_start;
        const int64_t e = static_cast<int64_t>(checks.head_rows.size());
        Tensor dst = finished.Rows(next_logit - e, e);
        b.GatherRows(state, checks.head_rows, &dst);
        timings_.head += {StepTimings::NanosecondsSince(head_start), 0};
        decide_start = Clock::now();
      }
    }

    // Softmax measures: the exit logits of every checked row.
    if (!checks.logit_items.empty()) {
      const int64_t c = static_cast<int64_t>(checks.logit_items.size());
      absl::StatusOr<Tensor> ex = Rows(exit_logits_, c, vocab);
      if (!ex.ok()) return ex.status();
      RETURN_IF_ERROR(Head(state, checks.logit_rows, &*ex));
      checks.confidences.resize(static_cast<size_t>(c));
      RETURN_IF_ERROR(
          b.ExitConfidences(*ex, checks.logit_kinds, checks.confidences));
      for (int64_t j = 0; j < c; ++j) {
        const int32_t i = checks.logit_items[j];
        if (!decide(i, checks.confidences[j]) || !sample_mode ||
            !items[i].sample) {
          continue;
        }
        // The rows waiting for the head come first: theirs stay contiguous.
        const Clock::time_point head_start = Clock::now();
        finish_head();
        decide_start += Clock::now() - head_start;
        head_first = next_logit + 1;
        Tensor dst = logits_out.Rows(next_logit, 1);
        const int32_t src[1] = {static_cast<int32_t>(j)};
        b.GatherRows(*ex, src, &dst);
        out->logit_items.push_back(i);
        out->items[i].logits_row = next_logit++;
      }
    }
    check_time += Clock::now() - decide_start;
    timings_.exit_checks +=
        {std::chrono::duration_cast<std::chrono::nanoseconds>(check_time)
             .count(),
         static_cast<int64_t>(checks.hidden_items.size() +
                              checks.logit_items.size())};
  }
  RETURN_IF_ERROR(FinishStep());  // a step without rounds did not merge it

  for (size_t i = 0; i < items.size(); ++i) {
    const LoopPlanner::ItemState& s = planner.item(static_cast<int32_t>(i));
    out->items[i].loops_done = s.next_loop;
    if (!s.exited && s.next_loop == num_loops) {
      out->items[i].exit_loop = num_loops - 1;
    }
  }

  // 3. Propagated K/V of the skipped loops: planned here, written by the
  // next step's first round (or FinishStep()).
  if (options_.kv_fill == KvFillPolicy::kPropagate && !exited.empty()) {
    const auto propagation_start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(PlanPropagation(items, planner, exited, exit_loops, state));
    timings_.propagation += {StepTimings::NanosecondsSince(propagation_start),
                             static_cast<int64_t>(exited.size())};
  }

  // 4. Logits.
  if (sample_mode) {
    std::vector<int32_t>& rows = head_rows_;
    rows.clear();
    const int32_t first = next_logit;
    for (size_t i = 0; i < items.size(); ++i) {
      const LoopPlanner::ItemState& s = planner.item(static_cast<int32_t>(i));
      if (!items[i].sample || s.exited || s.next_loop < num_loops) continue;
      rows.push_back(s.slot + s.num_rows - 1);
      out->logit_items.push_back(static_cast<int32_t>(i));
      out->items[i].logits_row = next_logit++;
    }
    if (!rows.empty()) {
      const auto head_start = std::chrono::steady_clock::now();
      Tensor dst = finished.Rows(first, static_cast<int64_t>(rows.size()));
      b.GatherRows(state, rows, &dst);
      timings_.head += {StepTimings::NanosecondsSince(head_start), 0};
    }
    finish_head();
    if (next_logit > 0) {
      logits_view_ = logits_out.Rows(0, next_logit);
      out->logits = &logits_view_;
    }
  } else if (!logit_rows.empty()) {
    std::vector<int32_t>& rows = head_rows_;
    rows.clear();
    rows.reserve(logit_rows.size());
    for (int32_t row : logit_rows) rows.push_back(planner.SlotOfRow(row));
    absl::StatusOr<Tensor> t =
        Rows(logits_, static_cast<int64_t>(rows.size()), vocab);
    if (!t.ok()) return t.status();
    RETURN_IF_ERROR(Head(state, rows, &*t));
    logits_view_ = *std::move(t);
    out->logits = &logits_view_;
  }
  if (bracket.backend != nullptr) {
    bracket.backend = nullptr;
    absl::Status ended = b.EndStepGraph(true);
    if (absl::IsAborted(ended)) {
      *rerun = true;  // nothing ran; the caller runs the step eagerly
      return ended;
    }
    RETURN_IF_ERROR(ended);
  }

  // 5. The hidden-state store.
  if (num_loops == 1) return absl::OkStatus();
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& item = items[i];
    const LoopPlanner::ItemState& s = planner.item(static_cast<int32_t>(i));
    const bool keep = s.exited ? options_.kv_fill == KvFillPolicy::kRecompute
                               : s.next_loop < num_loops;
    if (!keep) {
      store_.Erase(item.request_id, item.start_position);
      continue;
    }
    absl::StatusOr<HiddenStateStore::Entry*> entry =
        store_.Put(item.request_id, item.start_position, s.num_rows);
    if (!entry.ok()) return entry.status();
    b.GatherRows(state, Iota(s.slot, s.num_rows), &(*entry)->state);
    (*entry)->loops_done = s.next_loop;
    (*entry)->exit_state = s.exited;
    out->items[i].needs_kv_fill = s.exited;
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::PlanPropagation(std::span<const WorkItem> items,
                                         const LoopPlanner& planner,
                                         std::span<const int32_t> exited,
                                         std::span<const int32_t> exit_loops,
                                         const Tensor& state) {
  const int32_t num_loops = config_.num_loops;
  const int64_t hidden = config_.hidden_size;
  const int64_t kv_dim =
      static_cast<int64_t>(config_.num_key_value_heads) * config_.head_dim;
  Propagation& job = propagation_;

  // One row per (exited item, skipped loop), grouped by loop for the LoRA.
  job.pair_request.clear();
  job.pair_pos.clear();
  job.pair_slot.clear();
  job.segments.clear();
  job.last_row.clear();
  std::vector<int32_t>& state_rows = job.state_rows;
  state_rows.clear();
  // Exits are decided before the last loop only, so every exited token has
  // a pair in the last segment, at its index j among the exited: the row
  // PropagateKv copies its earlier pairs' normed state and base K/V from.
  for (int32_t loop : exit_loops) STRATA_CHECK(loop < num_loops - 1);
  for (int32_t l = 1; l < num_loops; ++l) {
    for (size_t j = 0; j < exited.size(); ++j) {
      if (exit_loops[j] >= l) continue;
      if (l < num_loops - 1) job.last_row.push_back(static_cast<int32_t>(j));
      const LoopPlanner::ItemState& s = planner.item(exited[j]);
      if (job.segments.empty() || job.segments.back().loop != l) {
        job.segments.push_back({l, static_cast<int32_t>(job.num_pairs()), 0});
      }
      ++job.segments.back().num_rows;
      job.pair_request.push_back(items[exited[j]].request_id);
      job.pair_pos.push_back(s.start_position);
      job.pair_slot.push_back(
          planner.KvSlot(s.block_table, l, s.start_position));
      state_rows.push_back(s.slot);
    }
  }
  const int64_t p = job.num_pairs();
  if (p == 0) return absl::OkStatus();

  // The exit states now (the next step overwrites the state buffer), and
  // every tensor PropagateKv() writes, so that its ops only take views.
  ASSIGN_OR_RETURN(job.h, Rows(fill_state_, p, hidden));
  backend_->GatherRows(state, state_rows, &job.h);
  ASSIGN_OR_RETURN(job.f, Rows(fill_rows_, p, hidden));
  ASSIGN_OR_RETURN(job.k, Rows(fill_k_, p, kv_dim));
  ASSIGN_OR_RETURN(job.v, Rows(fill_v_, p, kv_dim));
  const bool fused = !layers_.front().kv_proj.empty();
  if (fused) {
    ASSIGN_OR_RETURN(job.kv, Rows(fill_kv_, p, 2 * kv_dim));
  }
  if (!lora_.empty() && (!fused || lora_.front().a_kv.empty())) {
    // AddLora's intermediates (without a stacked A), sized for the pairs.
    ASSIGN_OR_RETURN(Tensor t, Rows(lora_t_, p, config_.lora_rank));
    ASSIGN_OR_RETURN(Tensor u, Scratch(lora_u_, p, kv_dim));
  }
  propagation_planned_ = true;
  return absl::OkStatus();
}

absl::Status LlamaModel::PropagateKv() {
  Propagation& job = propagation_;
  Backend& b = *backend_;
  // A token's pairs differ only in their loops' LoRA: its normed state and
  // base K/V are computed once, on the last segment's rows, and copied to
  // its earlier pairs (job.last_row). Rows are computed alike in any
  // product, so the bits are those of computing every pair.
  const LoopSegment& last = job.segments.back();
  const int64_t copies = last.first_row;
  for (size_t li = 0; li < layers_.size(); ++li) {
    LayerTensors& layer = layers_[li];
    const int32_t layer_index = static_cast<int32_t>(li);
    // f = RMSNorm(h_e) * input_norm_k, then K/V with each loop's weights.
    Tensor last_f = job.f.Rows(copies, last.num_rows);
    b.RmsNorm(job.h.Rows(copies, last.num_rows), layer.input_norm,
              config_.rms_norm_eps, &last_f);
    if (copies > 0) {
      Tensor first_f = job.f.Rows(0, copies);
      b.GatherRows(last_f, job.last_row, &first_f);
    }
    if (!layer.kv_proj.empty()) {
      // K and V in one product (the fused weight's slice), then both LoRA
      // updates from one A-product per loop (the stacked A of k and v).
      // Rows and columns are computed alike in any product, so the bits
      // are those of the block's q, k and v, which RunBlock's merge takes.
      Tensor last_kv = job.kv.Rows(copies, last.num_rows);
      b.MatMul(last_f, layer.kv_proj, &last_kv);
      if (copies > 0) {
        Tensor first_kv = job.kv.Rows(0, copies);
        b.GatherRows(last_kv, job.last_row, &first_kv);
      }
      Tensor* const parts[] = {&job.k, &job.v};
      b.SplitColumns(job.kv, parts);
      static constexpr LoraProj kKv[] = {LoraProj::kK, LoraProj::kV};
      RETURN_IF_ERROR(AddLoraGroup(job.f, layer_index, kKv,
                                   &LayerLoraTensors::a_kv, job.segments,
                                   parts));
    } else {
      RETURN_IF_ERROR(Project(job.f, layer.k_proj, layer_index, LoraProj::kK,
                              job.segments, &job.k));
      RETURN_IF_ERROR(Project(job.f, layer.v_proj, layer_index, LoraProj::kV,
                              job.segments, &job.v));
    }
    if (!layer.k_bias.empty()) {
      b.AddBias(layer.k_bias, &job.k);
      b.AddBias(layer.v_bias, &job.v);
    }
    b.Rope(rope_table_, job.pair_pos, config_.head_dim, &job.k);
    PagedKvCache::Layer& cache = kv_cache_.layer(layer_index);
    b.WriteKv(job.k, job.v, job.pair_slot, attention_, &cache.k_view,
              &cache.v_view);
  }
  return absl::OkStatus();
}

absl::Status LlamaModel::JoinPropagation() {
  if (!propagation_running_) return absl::OkStatus();
  const auto wait_start = std::chrono::steady_clock::now();
  backend_->WaitHostTask();
  timings_.propagation.nanoseconds += StepTimings::NanosecondsSince(wait_start);
  propagation_running_ = false;
  return std::exchange(propagation_status_, absl::OkStatus());
}

absl::Status LlamaModel::FinishStep() {
  RETURN_IF_ERROR(JoinPropagation());
  if (!propagation_pending_) return absl::OkStatus();
  const auto start = std::chrono::steady_clock::now();
  propagation_pending_ = false;
  absl::Status status = PropagateKv();
  timings_.propagation.nanoseconds += StepTimings::NanosecondsSince(start);
  return status;
}

void LlamaModel::ReleaseState(RequestId request) {
  store_.Release(request);
  if (!propagation_pending_) return;
  const std::vector<RequestId>& owners = propagation_.pair_request;
  if (std::find(owners.begin(), owners.end(), request) == owners.end()) {
    return;
  }
  if (absl::Status status = FinishStep(); !status.ok()) {
    STRATA_LOG(ERROR) << "propagated K/V of released request " << request
                      << " not written: " << status;
  }
}

}  // namespace strata
