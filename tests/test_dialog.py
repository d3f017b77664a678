"""The dialog core with the real models: routing, tickets, hand-off, history, speech-ready LLM replies, `chat`.

Run with `-s` to see the measured latencies (route, LLM classification, LLM first token, first sentence).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voicebot import grounding, prompts
from voicebot.dialog import Conversation, DialogEngine, Reply
from voicebot.intents import IntentClassifier
from voicebot.kb import SAMPLE_KB, load_kb, load_knowledge_base
from voicebot.llm import Message
from voicebot.retrieval import FaqIndex
from voicebot.store import new_call_id, open_store, speak_ticket_id

REPO = Path(__file__).resolve().parent.parent
PARAPHRASES = json.loads((Path(__file__).parent / "data" / "paraphrases.json").read_text(encoding="utf-8"))
MARKDOWN = re.compile(r"[*#_`\[\]|]|https?://|www\.")


@pytest.fixture(scope="module")
def engine(settings, embedder, llm, tmp_path_factory) -> DialogEngine:
    store = open_store(str(tmp_path_factory.mktemp("dialog") / "calls.db"))
    index = FaqIndex.build_or_load(SAMPLE_KB, embedder, fallback_dir=tmp_path_factory.mktemp("kb-index"))
    classifier = IntentClassifier.beside(llm)
    company = load_knowledge_base(SAMPLE_KB).company
    engine = DialogEngine(settings, embedder, index, llm, classifier, store, company=company)
    engine.warm_up()
    yield engine
    store.close()


def call(engine: DialogEngine) -> Conversation:
    return engine.conversation(new_call_id("chat"), "+15550100199", "chat")


def say(conversation: Conversation, text: str) -> tuple[Reply, str]:
    """One caller turn, heard in full."""
    reply = conversation.respond(text)
    spoken = " ".join(reply.sentences)
    conversation.commit(reply, spoken, interrupted=False, latency_ms={})
    return reply, spoken


# ---------------------------------------------------------------- routing

FAQ_PARAPHRASES = {
    "how do i return something": "returns",
    "when will my stuff arrive if I order today": "delivery_time",
    "what cards do you take": "payment_methods",
    "I forgot my password": "password_reset",
    "when do I get my refund": "refund_time",  # "refund" is a ticket keyword, but this is a question
    "where is my parcel": "track_order",
    "can I change my delivery address": "change_address",
}


def test_confident_questions_are_answered_from_the_kb_without_the_llm(engine: DialogEngine) -> None:
    answers = {entry.id: entry.answer for entry in engine.index.entries}
    conversation = call(engine)
    route_ms = []
    for text, faq_id in FAQ_PARAPHRASES.items():
        reply, spoken = say(conversation, text)
        assert (reply.route, reply.faq_id) == ("faq", faq_id), text
        assert spoken == answers[faq_id]
        assert reply.llm_first_token_ms is None and reply.classify_ms is None  # the LLM was never called
        route_ms.append(reply.route_ms)
    print(f"\nFAQ route (keywords + embedding + search): median {statistics.median(route_ms):.1f} ms")
    assert statistics.median(route_ms) < 200
    record = engine.store.get_call(conversation.call_id)
    assert [t["faq_id"] for t in record["turns"]] == list(FAQ_PARAPHRASES.values())
    assert record["turns"][0]["latency_ms"]["llm_first_token"] is None


def test_out_of_scope_questions_are_rarely_read_a_kb_answer(engine: DialogEngine) -> None:
    """Known limit: a question naming another company ("what is Amazon's return policy") scores like the KB's
    own question, so at the KB's calibrated thresholds it can be read the KB's answer."""
    read = []
    for text in PARAPHRASES["out_of_scope"]:
        reply = call(engine).respond(text)
        reply.cancel()  # the route is decided before the LLM writes a word
        if reply.route == "faq":
            read.append(text)
    print(f"\nout-of-scope questions read a KB answer: {read}")
    assert len(read) <= 2


def test_in_scope_questions_rarely_become_tickets_or_transfers(engine: DialogEngine) -> None:
    """The LLM classifier is only asked about statements; what it still gets wrong is measured here."""
    wrong = []
    for item in PARAPHRASES["in_scope"]:
        reply = call(engine).respond(item["text"])
        reply.cancel()
        if reply.route not in ("faq", "llm"):
            wrong.append((item["text"], reply.route))
    print(f"\nin-scope questions routed to a ticket or hand-off: {len(wrong)}/{len(PARAPHRASES['in_scope'])}")
    for text, route in wrong:
        print(f"  {route}: {text}")
    assert not any(route == "handoff" for _, route in wrong)
    assert len(wrong) <= 10  # damaged items among them are tickets on purpose ("the vase came smashed")


# ---------------------------------------------------------------- tickets

COMPLAINTS = [
    # (first words, the same issue again in other words)
    ("my parcel arrived damaged", "like I said, the parcel came damaged"),
    ("you charged me twice for the same order", "I was double charged, I told you"),
    ("I want to complain about your courier", "I'm complaining about the courier, as I said"),
    ("there are two payments on my card for one order", "there are two payments on my card for one order"),
    ("the courier left my parcel in the rain and everything is soaked", "everything in the parcel is soaked"),
    ("my order is three weeks late", "my order is three weeks late"),
    ("someone at your warehouse was really rude to me on the phone", "your staff member was rude to me"),
]


def test_each_complaint_opens_exactly_one_ticket_per_call(engine: DialogEngine) -> None:
    opened = 0
    for first, again in COMPLAINTS:
        conversation = call(engine)
        reply, spoken = say(conversation, first)
        if reply.route != "ticket":
            print(f"  no ticket for {first!r}: {reply.route} {spoken!r}")
            continue
        opened += 1
        assert reply.state == "complaint" and reply.ticket_id
        assert speak_ticket_id(reply.ticket_id) in spoken
        repeat, repeat_spoken = say(conversation, again)
        assert repeat.route == "ticket" and repeat.ticket_id == reply.ticket_id, again
        assert "already" in repeat_spoken
        tickets = engine.store.tickets_for_call(conversation.call_id)
        assert [t.id for t in tickets] == [reply.ticket_id]
        assert tickets[0].caller == "+15550100199" and tickets[0].status == "open"
        assert first.lower() in tickets[0].summary.lower()
    print(f"\ncomplaints that opened a ticket: {opened}/{len(COMPLAINTS)}")
    assert opened >= len(COMPLAINTS) - 2  # "my parcel arrived damaged" gets the KB's damaged-item answer instead


def test_two_different_issues_get_two_tickets(engine: DialogEngine) -> None:
    conversation = call(engine)
    first, _ = say(conversation, "the courier was rude to me and threw my parcel over the fence")
    second, _ = say(conversation, "and I was charged twice for it")
    assert first.ticket_id and second.ticket_id and first.ticket_id != second.ticket_id
    first_category, second_category = [t.category for t in engine.store.tickets_for_call(conversation.call_id)]
    assert second_category == "billing" and first_category != "billing"


def test_a_bare_ticket_request_is_summarised_from_the_turn_before(engine: DialogEngine) -> None:
    conversation = call(engine)
    say(conversation, "can you tell me the price of the oak dining table")
    reply, _ = say(conversation, "ok then open a ticket please")
    assert reply.route == "ticket"
    summary = engine.store.tickets_for_call(conversation.call_id)[0].summary
    assert "oak dining table" in summary and "open a ticket" in summary


def test_a_yes_takes_up_the_ticket_offered_when_no_colleague_can_take_the_call(engine: DialogEngine) -> None:
    conversation = engine.conversation(new_call_id("chat"), "+15550100199", "chat", can_hand_off=False)
    say(conversation, "the courier threw my parcel over the fence")
    asked, spoken = say(conversation, "can I speak to a real person please")
    assert (asked.route, asked.action, spoken) == ("fallback", None, prompts.NO_COLLEAGUE_LINE)
    reply, spoken = say(conversation, "yes please")
    assert reply.route == "ticket" and speak_ticket_id(reply.ticket_id) in spoken
    conversation.end()
    assert engine.store.get_call(conversation.call_id)["handoff"] is None


def test_a_no_lets_the_offer_go(engine: DialogEngine) -> None:
    conversation = engine.conversation(new_call_id("chat"), "+15550100199", "chat", can_hand_off=False)
    say(conversation, "can I speak to a real person please")
    reply, _ = say(conversation, "no thanks")
    assert reply.route not in ("ticket", "handoff") and not engine.store.tickets_for_call(conversation.call_id)


def test_the_same_problem_said_again_in_other_words_keeps_its_ticket(engine: DialogEngine) -> None:
    conversation = call(engine)
    first, _ = say(conversation, "I was charged twice for my order")
    again, spoken = say(conversation, "you billed me two times for the same order")
    assert first.route == again.route == "ticket" and again.ticket_id == first.ticket_id and "already" in spoken


# ---------------------------------------------------------------- hand-off and goodbye


@pytest.mark.parametrize("text", ["agent", "can I speak to a real person please", "I want a human"])
def test_hand_off_on_request(engine: DialogEngine, text: str) -> None:
    conversation = call(engine)
    reply, spoken = say(conversation, text)
    assert (reply.route, reply.action, reply.reason, reply.state) == ("handoff", "transfer", "requested", "handoff")
    assert "colleague" in spoken
    conversation.end()
    assert engine.store.get_call(conversation.call_id)["handoff"] == "requested"


def test_no_hand_off_when_the_caller_says_they_dont_need_one(engine: DialogEngine) -> None:
    reply = call(engine).respond("I don't need a human, I just want to know how to track my order")
    reply.cancel()
    assert reply.action is None and reply.route in ("faq", "llm")


def test_no_match_is_declined_then_offered_a_way_out_then_handed_off(engine: DialogEngine) -> None:
    conversation = call(engine)
    first, spoken = say(conversation, "what's the capital of Australia")
    assert first.low_confidence and first.action is None
    assert all(grounding.check_ungrounded(sentence).ok for sentence in prompts.split_sentences(spoken))
    second, spoken = say(conversation, "who won the football game last night")
    assert (second.route, spoken) == ("fallback", prompts.FALLBACK_LINE)
    third, _ = say(conversation, "what will the weather be like on Sunday")
    assert (third.route, third.action, third.reason) == ("handoff", "transfer", "failed_turns")
    conversation.end()
    record = engine.store.get_call(conversation.call_id)
    assert record["handoff"] == "failed_turns"
    assert [t["route"] for t in record["turns"]][-1] == "handoff"


def test_a_good_turn_resets_the_failed_count(engine: DialogEngine) -> None:
    conversation = call(engine)
    say(conversation, "what's the capital of Australia")
    say(conversation, "how do i return something")
    reply = conversation.respond("who won the football game last night")
    reply.cancel()
    assert reply.action is None


def test_hand_off_on_repeated_frustration(engine: DialogEngine) -> None:
    conversation = call(engine)
    first, _ = say(conversation, "this is useless, where is my parcel")
    assert first.action is None
    second, spoken = say(conversation, "you're not helping at all")
    assert (second.route, second.action, second.reason) == ("handoff", "transfer", "frustration")
    assert "frustrating" in spoken


def test_dtmf_hand_off(engine: DialogEngine) -> None:
    conversation = call(engine)
    reply = conversation.respond_dtmf("human")
    conversation.commit(reply, " ".join(reply.sentences), interrupted=False)
    assert (reply.route, reply.action, reply.reason) == ("dtmf", "transfer", "dtmf")
    conversation.end()
    assert engine.store.get_call(conversation.call_id)["handoff"] == "dtmf"


@pytest.mark.parametrize("text", ["thanks, that's everything", "ok bye", "no that's all, thank you"])
def test_goodbye_hangs_up(engine: DialogEngine, text: str) -> None:
    conversation = call(engine)
    reply, spoken = say(conversation, text)
    assert (reply.route, reply.action, reply.state) == ("hangup", "hangup", "closing")
    assert "Goodbye" in spoken


# ---------------------------------------------------------------- history, barge-in, greeting


def test_history_is_bounded(engine: DialogEngine) -> None:
    conversation = call(engine)
    limit = engine.dialog.history_turns
    for turn in range(3 * limit):
        say(conversation, list(FAQ_PARAPHRASES)[turn % len(FAQ_PARAPHRASES)])
        assert len(conversation.history) <= limit
    _, spoken = say(conversation, "do you ship to Canada")  # the LLM prompt still fits its context
    assert spoken
    assert len(engine.store.get_call(conversation.call_id)["turns"]) == 3 * limit + 1


def test_barge_in_records_what_was_heard_and_stops_the_llm(engine: DialogEngine) -> None:
    conversation = call(engine)
    reply = conversation.respond("I'd like to send back a jacket I bought last week")
    assert reply.route == "llm"
    first = next(reply.sentences)
    heard = " ".join(first.split()[:3])
    conversation.commit(reply, heard, interrupted=True, latency_ms={"barge_in": 420.0})
    assert next(reply.sentences, None) is None  # generation stopped
    assert conversation.history[-1].bot == heard
    turn = engine.store.get_call(conversation.call_id)["turns"][-1]
    assert (turn["reply_text"], turn["interrupted"], turn["latency_ms"]["barge_in"]) == (heard, True, 420.0)
    assert turn["latency_ms"]["llm_first_token"] is not None


def test_greeting_is_recorded_and_fixed_lines_are_listed(engine: DialogEngine) -> None:
    conversation = call(engine)
    greeting = conversation.greeting()
    text = " ".join(greeting.sentences)
    assert text == "Hi, thanks for calling Northwind Shop. How can I help?"
    conversation.commit(greeting, text, interrupted=False)
    assert engine.store.get_call(conversation.call_id)["turns"] == []
    assert "How can I help?" in engine.fixed_prompts()


# ---------------------------------------------------------------- LLM replies for speech, and their cost

LLM_QUESTIONS = [
    "I'd like to send back a jacket I bought last week",
    "do I have to pay for delivery or is it included",
    "can I collect it from your shop myself",
    "how long is the guarantee on electronics",
    "the jeans are too small, can I swap them for a bigger pair",
]
# Out of scope but close enough to a KB entry to reach the LLM with facts: it must not say yes.
NEAR_MISSES = ["do you sell car tyres", "can you book me a flight to Chicago", "do you sell prescription glasses"]


def test_llm_replies_are_short_plain_speech(engine: DialogEngine) -> None:
    first_token, first_sentence = [], []
    for text in LLM_QUESTIONS + NEAR_MISSES:
        conversation = call(engine)
        start = time.perf_counter()
        reply = conversation.respond(text)
        sentences = []
        for sentence in reply.sentences:
            if not sentences:
                first_sentence.append((time.perf_counter() - start) * 1000)
            sentences.append(sentence)
        spoken = " ".join(sentences)
        first = reply.llm_first_token_ms or 0.0
        print(f"\n  [{reply.route}, score {reply.score:.2f}, first token {first:.0f} ms] {text!r}")
        print(f"    -> {spoken!r}")
        if reply.llm_first_token_ms is not None:
            first_token.append(reply.llm_first_token_ms)
        assert reply.route in ("llm", "fallback", "faq")  # faq: a refused reply read the entry as written
        assert 1 <= len(prompts.split_sentences(spoken)) <= 2 or reply.route == "fallback"
        assert not MARKDOWN.search(spoken) and spoken.isascii()
        if reply.low_confidence:
            assert all(grounding.check_ungrounded(sentence).ok for sentence in prompts.split_sentences(spoken))
        if text in NEAR_MISSES:
            assert not spoken.lower().startswith("yes"), spoken
    print(
        f"\nLLM reply, fresh call (no history): first token median {statistics.median(first_token):.0f} ms, "
        f"first sentence median {statistics.median(first_sentence):.0f} ms (from the caller's text)"
    )


def test_warm_up_caches_the_system_prompt(engine: DialogEngine) -> None:
    """First-turn LLM latency with the static prompt's KV state cached (warm-up) and without."""
    cold, warm = [], []
    for run in range(5):
        engine.llm.complete([Message("system", f"unrelated prompt {run}"), Message("user", "hi")], max_tokens=1)
        for times in (cold, warm):
            reply = call(engine).respond("do you sell car tyres")
            next(reply.sentences)
            reply.cancel()
            times.append(reply.llm_first_token_ms)
            engine.warm_up()
    print(
        f"\nfirst LLM token of a first turn: without warm-up median {statistics.median(cold):.0f} ms, "
        f"after warm-up {statistics.median(warm):.0f} ms"
    )
    assert statistics.median(warm) < statistics.median(cold)


def test_prefill_takes_the_history_off_the_next_llm_turn(engine: DialogEngine) -> None:
    """Three KB answers, then a question for the LLM: its first token with and without `prefill` in between."""
    texts = list(FAQ_PARAPHRASES)
    times: dict[bool, list[float]] = {False: [], True: []}
    for run in range(10):
        prefill = bool(run % 2)
        conversation = call(engine)
        for turn in range(3):  # a different history each run, so no run reuses the last one's cache
            say(conversation, texts[(run + turn) % len(texts)])
        if prefill:
            conversation.prefill()
        reply = conversation.respond("can I collect it from your shop myself")
        next(reply.sentences)
        reply.cancel()
        times[prefill].append(reply.llm_first_token_ms)
    print(
        f"\nfirst LLM token after 3 KB turns: without prefill median {statistics.median(times[False]):.0f} ms, "
        f"with prefill {statistics.median(times[True]):.0f} ms"
    )
    assert statistics.median(times[True]) < statistics.median(times[False])


# ---------------------------------------------------------------- `voicebot chat`, across processes


def run_chat(db: Path, lines: list[str]) -> str:
    env = {k: v for k, v in os.environ.items() if k.startswith(("VOICEBOT_MODELS_DIR", "PATH", "HOME"))}
    done = subprocess.run(
        [sys.executable, "-m", "voicebot", "chat", "--db", str(db), "--caller", "+15550100199"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def voicebot(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "voicebot", *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.models  # loads models outside the shared fixtures
def test_chat_piped_and_tickets_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "calls.db"
    first = run_chat(db, ["how do i return something", "you sent me the wrong size and nobody answers my emails"])
    assert first.startswith("bot> Hi, thanks for calling Northwind Shop.")
    answer = next(e.answer for e in load_kb(SAMPLE_KB) if e.id == "returns")
    assert f"bot [faq returns]> {answer}" in first
    ticket_id = re.search(r"ticket ((?:[A-Z0-9], ){5}[A-Z0-9])", first).group(1).replace(", ", "")
    call_id = re.search(r"^call id: (CA[0-9a-f]{32})$", first, re.MULTILINE).group(1)

    second = run_chat(db, ["you charged me twice for my order", "thanks, that's everything"])
    assert "bot [hangup]>" in second and "(the bot hung up)" in second
    second_ticket = re.search(r"ticket ((?:[A-Z0-9], ){5}[A-Z0-9])", second).group(1).replace(", ", "")

    ticket = json.loads(voicebot("tickets", "show", ticket_id, "--db", str(db), "--json"))
    assert (ticket["id"], ticket["call_id"]) == (ticket_id, call_id)
    assert ticket["category"] in load_knowledge_base(SAMPLE_KB).company.ticket_categories
    assert ticket["caller"] == "+1555***0199"
    assert ticket["summary"] == "You sent me the wrong size and nobody answers my emails"
    assert json.loads(voicebot("tickets", "show", second_ticket, "--db", str(db), "--json"))["category"] == "billing"
    record = json.loads(voicebot("calls", "show", call_id, "--db", str(db), "--json"))
    assert record["tickets"] == [ticket_id] and record["ended_at"]
    assert [(t["route"], t["faq_id"]) for t in record["turns"]] == [("faq", "returns"), ("ticket", None)]


def test_a_withdrawn_reply_takes_back_the_ticket_it_opened(engine: DialogEngine) -> None:
    conversation = call(engine)
    fragment = conversation.respond("I want to make a complaint")
    assert fragment.route == "ticket" and fragment.opened_ticket
    list(fragment.sentences)
    conversation.withdraw(fragment)  # the caller was still talking: nothing of this reply was heard
    assert engine.store.tickets_for_call(conversation.call_id) == []
    whole, _ = say(conversation, "I want to make a complaint, the courier threw my parcel over the fence")
    assert whole.route == "ticket" and whole.opened_ticket
    (ticket,) = engine.store.tickets_for_call(conversation.call_id)
    assert ticket.id == whole.ticket_id and "fence" in ticket.summary


def test_doubtful_words_get_asked_again_then_a_way_to_a_colleague(engine: DialogEngine) -> None:
    conversation = call(engine)
    first = conversation.respond("you charged me wife on my last wheel", misheard=True)
    assert first.route == "repeat" and " ".join(first.sentences) == prompts.NOT_HEARD_LINE
    conversation.commit(first, prompts.NOT_HEARD_LINE, interrupted=False)
    second = conversation.respond("I want a refund on the wheel", misheard=True)
    spoken = " ".join(second.sentences)
    assert second.route == "repeat" and spoken == prompts.NOT_HEARD_AGAIN_LINE
    conversation.commit(second, spoken, interrupted=False)
    assert engine.store.tickets_for_call(conversation.call_id) == []
    reply, _ = say(conversation, "a colleague, please")
    assert reply.route == "handoff"
