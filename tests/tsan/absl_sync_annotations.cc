// ThreadSanitizer builds only (STRATA_SANITIZE=thread links this into every
// test binary): tells TSan about absl::Mutex, absl::CondVar and
// absl::Notification.
//
// Why: Debian's abseil is not built with -fsanitize=thread, so the atomics
// and futexes inside absl::Mutex are invisible to TSan and it sees no
// happens-before edge between one thread's Unlock and the next thread's
// Lock: every field guarded by an absl::Mutex would be reported as a race.
// These definitions interpose the library's own (the executable's symbols
// win the dynamic lookup, for calls from our code and from inside abseil
// alike), call the real function through dlsym(RTLD_NEXT), and add the edge
// TSan cannot see: a release on the mutex's address before it is given up,
// an acquire after it is taken. With a TSan-built abseil this file would be
// unnecessary.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace {

// The real definition of `mangled` in the next object (libabsl).
template <typename Fn>
Fn Real(const char* mangled) {
  void* fn = dlsym(RTLD_NEXT, mangled);
  if (fn == nullptr) {
    std::fprintf(stderr, "absl_sync_annotations: no %s in abseil\n", mangled);
    std::abort();
  }
  return reinterpret_cast<Fn>(fn);
}

// Notification's flag: the std::atomic<bool> after its Mutex (private; its
// inline HasBeenNotified() loads it with acquire, instrumented, so a release
// on the same address is what it synchronizes with).
void* NotifiedFlag(const absl::Notification* n) {
  static_assert(sizeof(absl::Notification) >=
                sizeof(absl::Mutex) + sizeof(std::atomic<bool>));
  return const_cast<char*>(reinterpret_cast<const char*>(n)) +
         sizeof(absl::Mutex);
}

// A waiter's condition is evaluated inside abseil with the mutex held, on
// the waiting thread or on the thread unlocking: bracket each evaluation
// with the acquire and release TSan would otherwise miss.
struct AnnotatedCondition {
  const absl::Condition* cond;
  absl::Mutex* mu;
};

bool EvalAnnotated(AnnotatedCondition* c) {
  __tsan_acquire(c->mu);
  const bool met = c->cond->Eval();
  __tsan_release(c->mu);
  return met;
}

}  // namespace

// The mangled names of absl's out-of-line functions (namespace absl, inline
// namespace ABSL_OPTION_INLINE_NAMESPACE_NAME, "debian3" on Debian 12).
#define STRATA_ABSL_NS "N4absl7debian3"

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static const auto real = Real<void (*)(Mutex*)>("_Z" STRATA_ABSL_NS "5Mutex4LockEv");
  real(this);
  __tsan_acquire(this);
}

void Mutex::ReaderLock() {
  static const auto real =
      Real<void (*)(Mutex*)>("_Z" STRATA_ABSL_NS "5Mutex10ReaderLockEv");
  real(this);
  __tsan_acquire(this);
}

bool Mutex::TryLock() {
  static const auto real =
      Real<bool (*)(Mutex*)>("_Z" STRATA_ABSL_NS "5Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) __tsan_acquire(this);
  return locked;
}

void Mutex::Unlock() {
  static const auto real =
      Real<void (*)(Mutex*)>("_Z" STRATA_ABSL_NS "5Mutex6UnlockEv");
  __tsan_release(this);
  real(this);
}

void Mutex::ReaderUnlock() {
  static const auto real =
      Real<void (*)(Mutex*)>("_Z" STRATA_ABSL_NS "5Mutex12ReaderUnlockEv");
  __tsan_release(this);
  real(this);
}

// Await and the LockWhen family give the mutex up while they wait and hold
// it again when they return.
void Mutex::Await(const Condition& cond) {
  static const auto real = Real<void (*)(Mutex*, const Condition&)>(
      "_Z" STRATA_ABSL_NS "5Mutex5AwaitERKNS0_9ConditionE");
  AnnotatedCondition annotated{&cond, this};
  __tsan_release(this);
  real(this, Condition(&EvalAnnotated, &annotated));
  __tsan_acquire(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  static const auto real =
      Real<bool (*)(Mutex*, const Condition&, absl::Duration)>(
          "_Z" STRATA_ABSL_NS
          "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  AnnotatedCondition annotated{&cond, this};
  __tsan_release(this);
  const bool met = real(this, Condition(&EvalAnnotated, &annotated), timeout);
  __tsan_acquire(this);
  return met;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "_Z" STRATA_ABSL_NS "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AnnotatedCondition annotated{&cond, this};
  __tsan_release(this);
  const bool met = real(this, Condition(&EvalAnnotated, &annotated), deadline);
  __tsan_acquire(this);
  return met;
}

void Mutex::LockWhen(const Condition& cond) {
  static const auto real = Real<void (*)(Mutex*, const Condition&)>(
      "_Z" STRATA_ABSL_NS "5Mutex8LockWhenERKNS0_9ConditionE");
  AnnotatedCondition annotated{&cond, this};
  real(this, Condition(&EvalAnnotated, &annotated));
  __tsan_acquire(this);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  static const auto real =
      Real<bool (*)(Mutex*, const Condition&, absl::Duration)>(
          "_Z" STRATA_ABSL_NS
          "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  AnnotatedCondition annotated{&cond, this};
  const bool met = real(this, Condition(&EvalAnnotated, &annotated), timeout);
  __tsan_acquire(this);
  return met;
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "_Z" STRATA_ABSL_NS
      "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AnnotatedCondition annotated{&cond, this};
  const bool met = real(this, Condition(&EvalAnnotated, &annotated), deadline);
  __tsan_acquire(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  static const auto real = Real<void (*)(CondVar*, Mutex*)>(
      "_Z" STRATA_ABSL_NS "7CondVar4WaitEPNS0_5MutexE");
  __tsan_release(mu);
  real(this, mu);
  __tsan_acquire(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  static const auto real = Real<bool (*)(CondVar*, Mutex*, absl::Duration)>(
      "_Z" STRATA_ABSL_NS "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  __tsan_release(mu);
  const bool timed_out = real(this, mu, timeout);
  __tsan_acquire(mu);
  return timed_out;
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  static const auto real = Real<bool (*)(CondVar*, Mutex*, absl::Time)>(
      "_Z" STRATA_ABSL_NS "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_release(mu);
  const bool timed_out = real(this, mu, deadline);
  __tsan_acquire(mu);
  return timed_out;
}

void Notification::Notify() {
  static const auto real = Real<void (*)(Notification*)>(
      "_Z" STRATA_ABSL_NS "12Notification6NotifyEv");
  __tsan_release(NotifiedFlag(this));
  real(this);
}

void Notification::WaitForNotification() const {
  static const auto real = Real<void (*)(const Notification*)>(
      "_ZNK4absl7debian312Notification19WaitForNotificationEv");
  real(this);
  __tsan_acquire(NotifiedFlag(this));
}

bool Notification::WaitForNotificationWithTimeout(
    absl::Duration timeout) const {
  static const auto real =
      Real<bool (*)(const Notification*, absl::Duration)>(
          "_ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_"
          "8DurationE");
  const bool notified = real(this, timeout);
  if (notified) __tsan_acquire(NotifiedFlag(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(absl::Time deadline) const {
  static const auto real = Real<bool (*)(const Notification*, absl::Time)>(
      "_ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_"
      "4TimeE");
  const bool notified = real(this, deadline);
  if (notified) __tsan_acquire(NotifiedFlag(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
