#!/usr/bin/env python3
"""Writes synthetic_chat.jsonl: a small, deterministic, chat-like benchmark set.

Every line is one request for strata-bench's dataset workload:
  {"messages": [{"role": ..., "content": ...}, ...], "output_len": N}
or, for plain completions,
  {"prompt": "...", "output_len": N}

The text is assembled from templates (no external data): a few system
prompts (so prefix caching has something to share), single- and multi-turn
conversations, and completion prompts of assorted lengths. Target output
lengths follow the kind of question (short answers, explanations, long
write-ups). Rerun to regenerate; the output only depends on SEED.

Usage: /usr/bin/python3 bench/data/make_synthetic_chat.py [OUT]
"""
import json
import random
import sys

SEED = 20240601
NUM_CHAT = 160
NUM_COMPLETION = 40

SYSTEM_PROMPTS = [
    "You are a helpful assistant. Answer clearly and concisely.",
    "You are a patient tutor. Explain each step and check the student's "
    "understanding before moving on. Prefer small examples over long "
    "definitions, and point out common mistakes.",
    "You are a senior software engineer reviewing code and answering "
    "questions about systems programming, networking and databases. Be "
    "precise, mention trade-offs, and say when something depends on the "
    "platform.",
    "You are a travel planner. Suggest itineraries with realistic travel "
    "times, keep budgets in mind, and list what to book in advance.",
]

TOPICS = [
    "binary search", "hash tables", "TCP congestion control", "garbage "
    "collection", "photosynthesis", "the water cycle", "compound interest",
    "the French Revolution", "sourdough bread", "plate tectonics",
    "public-key cryptography", "vaccines", "black holes", "supply and demand",
    "the Pythagorean theorem", "recursion", "database indexes", "caching",
    "solar panels", "sleep cycles", "memory allocators", "unit testing",
    "git rebasing", "a three-day trip to Lisbon", "a week in Kyoto",
    "container orchestration", "floating-point rounding", "Unicode",
]

# (template, output length range): short answers, explanations, write-ups.
QUESTIONS = [
    ("In one sentence, what is {t}?", (16, 48)),
    ("Give me three facts about {t}.", (48, 96)),
    ("Explain {t} to a twelve-year-old.", (96, 192)),
    ("What are the most common misconceptions about {t}?", (96, 224)),
    ("Write a detailed, structured overview of {t} with headings.",
     (224, 384)),
    ("Compare {t} with {u}. Where do they overlap?", (128, 256)),
    ("I keep getting confused by {t}. Can you walk me through it step by "
     "step, with an example?", (160, 320)),
    ("Summarize {t} as a bulleted list of at most five items.", (48, 112)),
]

FOLLOW_UPS = [
    "Thanks. Can you make that shorter?",
    "Could you give a concrete example?",
    "How does that relate to {u}?",
    "What would an expert add to that answer?",
    "Can you turn that into a short quiz with answers?",
]

ASSISTANT_OPENERS = [
    "Sure. In short, {t} is best understood through one idea at a time.",
    "Good question. The key point about {t} is how its parts interact.",
    "Here is a compact answer about {t}, followed by an example.",
]

COMPLETION_STARTS = [
    "The following is a short essay about {t}.\n\n",
    "Notes from a lecture on {t}:\n1.",
    "Q: What should every beginner know about {t}?\nA:",
    "Once upon a time, a curious engineer decided to learn about {t}.",
    "README\n\nThis document explains {t} for new team members. ",
]

PADDING = (
    "Background: the reader has a general education, some programming "
    "experience, and twenty minutes to spare. They prefer plain words, "
    "short paragraphs and one worked example over a list of definitions. "
)


def chat_entry(rng):
    topic, other = rng.sample(TOPICS, 2)
    question, (lo, hi) = rng.choice(QUESTIONS)
    messages = []
    if rng.random() < 0.85:
        messages.append({"role": "system",
                         "content": rng.choice(SYSTEM_PROMPTS)})
    user = question.format(t=topic, u=other)
    if rng.random() < 0.3:
        user = PADDING * rng.randint(1, 4) + user
    messages.append({"role": "user", "content": user})
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        messages.append({"role": "assistant",
                         "content": rng.choice(ASSISTANT_OPENERS).format(
                             t=topic)})
        messages.append({"role": "user",
                         "content": rng.choice(FOLLOW_UPS).format(u=other)})
    return {"messages": messages, "output_len": rng.randint(lo, hi)}


def completion_entry(rng):
    topic = rng.choice(TOPICS)
    prompt = rng.choice(COMPLETION_STARTS).format(t=topic)
    if rng.random() < 0.4:
        prompt = PADDING * rng.randint(1, 6) + prompt
    return {"prompt": prompt, "output_len": rng.randint(32, 256)}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "synthetic_chat.jsonl"
    rng = random.Random(SEED)
    entries = [chat_entry(rng) for _ in range(NUM_CHAT)]
    entries += [completion_entry(rng) for _ in range(NUM_COMPLETION)]
    rng.shuffle(entries)
    with open(out, "w", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
