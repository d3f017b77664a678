"""Settings: one object, read from a TOML file and `VOICEBOT_*` environment variables.

Each section is a dataclass; a TOML table `[section]` sets its fields and `VOICEBOT_SECTION_FIELD` overrides
them (e.g. `VOICEBOT_SERVER_PORT=8080`). A few well-known names are honoured too: `VOICEBOT_MODELS_DIR`,
`VOICEBOT_PUBLIC_URL`, `TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`. Unknown keys are errors, so a typo in the
config file is caught at start-up instead of silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from models.fetch import default_models_dir
from voicebot.data_dir import default_store_url

SECRET_FIELDS = {("server", "twilio_auth_token"), ("models", "llm_api_key")}


class ConfigError(ValueError):
    """A setting is wrong; the message names the file or variable and the value at fault."""


@dataclass
class ModelSettings:
    profile: str = "embedded"
    dir: Path = field(default_factory=default_models_dir)
    threads: int = 2
    # Optional local paths that replace the manifest's artifact for a role (e.g. your own Piper voice).
    llm_path: Path | None = None
    stt_path: Path | None = None
    tts_path: Path | None = None
    embedder_path: Path | None = None
    # An OpenAI-compatible chat endpoint that writes the replies instead of the model in this process, so several
    # workers share one LLM server: llama.cpp's server, llama-cpp-python's, vLLM (e.g. http://10.0.0.5:8000/v1).
    # llm_model is the model name it serves (empty: the first its /models lists); llm_api_key is sent as a Bearer
    # token; llm_timeout_s bounds connecting, and each wait for the next piece of a reply.
    llm_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_timeout_s: float = 30.0


@dataclass
class DialogSettings:
    # Who answers the phone. Empty takes the name from the knowledge base's "company" block (a JSON KB can carry
    # one; a CSV or list-form KB has none, and the bot then speaks without a name); set, it replaces the KB's.
    company_name: str = ""
    tone: str = "friendly, calm and brief"
    kb_path: Path | None = None
    # Extra example utterances per intent (a JSON file shaped like voicebot/data/intents.json), added to the
    # shipped ones: a deployment's own ways of asking for a person, saying goodbye or stating a problem.
    intents_path: Path | None = None
    # Retrieval routing defaults, for a knowledge base that `voicebot kb check` has not calibrated (the
    # calibrated thresholds are stored beside the KB's index and win): at or above faq_threshold, and at least
    # faq_margin above the second entry, the KB answer is read out as written; from grounded_threshold the LLM
    # answers from the top_k entries; below, it may only decline and offer a ticket or a human.
    faq_threshold: float = 0.77
    faq_margin: float = 0.0
    grounded_threshold: float = 0.31
    top_k: int = 3
    # A grounded reply gets the top_k entries scoring within facts_margin of the best one (and at or above
    # grounded_threshold). Each entry is ~30-40 prompt tokens, ~5 ms apiece on 2 cores before the first word;
    # on tests/data/paraphrases.json 0.08 keeps the right entry as often as all 3 do (67/69) with 1.4 on average.
    facts_margin: float = 0.08
    history_turns: int = 10
    llm_max_tokens: int = 80
    llm_context: int = 2048


@dataclass
class VoiceSettings:
    language: str = "en"
    # Turn-taking (Silero VAD on 32 ms windows). A window is speech at or above vad_threshold and stays speech
    # until the probability drops below vad_neg_threshold (default vad_threshold - 0.15). Speech must last
    # vad_min_speech_ms to start a turn (clicks don't); after vad_pause_ms of silence the words so far are
    # transcribed speculatively, and after vad_end_ms the turn is over, or already after vad_question_end_ms
    # when that transcript ends in a question mark (0 turns this off), or only after vad_unfinished_end_ms when
    # it stops mid-sentence ("... and", "the", a comma). Speech within continuation_ms of the reply starting to
    # play (or before it does) goes on with the same turn: the reply is withdrawn and the whole turn answered.
    vad_threshold: float = 0.5
    vad_neg_threshold: float | None = None
    vad_min_speech_ms: int = 150
    vad_pause_ms: int = 200
    vad_end_ms: int = 450
    vad_question_end_ms: int = 300
    vad_unfinished_end_ms: int = 1000
    # A second look for voices Silero scores low (whispered, quiet): a window at least vad_quiet_threshold likely
    # to be speech counts when it is vad_quiet_snr_db louder than the call's noise floor (0 turns this off).
    vad_quiet_threshold: float = 0.04
    vad_quiet_snr_db: float = 10.0
    continuation_ms: int = 1000
    # Prompt Whisper with the KB's names (company, brands, plans) written as a call's opening. Off by default:
    # on six businesses' caller lines it cut WER from 0.302 to 0.254, but it turned a sample call's "mm-hm" into
    # a word ("Emin.") that then took a turn; turn it on where brand names matter more than that risk.
    stt_vocabulary: bool = False
    # Barge-in: sound over the bot for barge_in_hold_ms (as the VAD hears it) pauses it (unless it began within
    # barge_in_guard_ms of the bot starting to talk); Whisper looks at its words every barge_in_ms of speech:
    # real words interrupt, a backchannel or noise lets the reply go on. Speech lasting backchannel_max_ms
    # interrupts regardless.
    # dtmf_map maps keypad digits to meanings ("0=human").
    barge_in_hold_ms: int = 96
    barge_in_ms: int = 250
    barge_in_guard_ms: int = 300
    backchannel_max_ms: int = 1500
    dtmf_map: str = "0=human"
    # Never strand the caller. No answer audio filler_after_ms after the caller stopped: "One moment." (0: never);
    # none by reply_deadline_ms, or a transcript not there stt_deadline_ms after the turn ended, or an answer
    # that stops coming for reply_stall_ms: an apology from memory and "could you say that again?". A caller
    # silent no_input_ms after the bot finished is asked if they are still there, then the call ends; a call
    # ends politely after max_call_s.
    filler_after_ms: int = 1200
    stt_deadline_ms: int = 2500
    reply_deadline_ms: int = 3500
    reply_stall_ms: int = 1700
    no_input_ms: int = 8000
    max_call_s: int = 1800


@dataclass
class StoreSettings:
    # sqlite:///path.db (one machine; default voicebot.db in the data folder), or
    # postgresql://user:password@host:port/database for several workers on one database (voicebot/store_postgres.py).
    url: str = field(default_factory=default_store_url)  # var/voicebot.db in a checkout; see voicebot.data_dir
    # Runs of at least this many digits the caller says (card, account, IBAN and phone numbers) are stored as
    # "[redacted]" in transcripts and ticket summaries; 0 stores them as heard. 8 keeps prices, years, dates,
    # order numbers up to 7 digits and ticket ids (why: voicebot/redaction.py); 1 to 6 would eat those, refused.
    redact_digits: int = 8
    # Where `voicebot serve` keeps the writes the store refused until it takes them (unset: beside a SQLite file,
    # `<db>.spool`; for PostgreSQL, $XDG_STATE_HOME/voicebot/, one per database). One process per spool: give
    # each worker on one machine its own.
    spool_path: Path | None = None

    def __setattr__(self, name: str, value: typing.Any) -> None:
        """A bad redact_digits is refused where the config file or environment sets it, not at the first call."""
        if name == "redact_digits":
            from voicebot.redaction import check_min_digits

            try:
                check_min_digits(value, "setting store.redact_digits (VOICEBOT_STORE_REDACT_DIGITS)")
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        super().__setattr__(name, value)


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    # Several workers answering one number behind one proxy: this worker's own https URL (e.g.
    # https://bot.example.com/w1, which the proxy routes to this worker with the /w1 prefix removed). The call's
    # media stream, stream status and hand-off result come back there, to the worker holding the call's state;
    # the number's webhook (public_url + /twiml) may reach any worker. Empty: public_url (one worker).
    worker_url: str = ""
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    human_number: str = ""
    max_calls: int = 4
    insecure: bool = False
    media_port: int = 8081  # the Media Streams WebSocket (/media); HTTP (/twiml, /metrics, ...) is on port
    shutdown_timeout_s: float = 30.0  # on SIGTERM, how long live calls may go on before they are closed
    twilio_api_url: str = ""  # Twilio REST API origin; empty means https://api.twilio.com (tests use a fake)
    # Twilio connects the stream a second or two after fetching the TwiML: a token unused this long is void, and
    # stops holding a place against max_calls.
    stream_token_ttl_s: float = 10.0
    idle_timeout_s: float = 10.0  # a live stream that sends nothing this long is over (Twilio sends 50 frames/s)
    # A stream whose audio runs this far ahead of real time is a flood, and is closed (the simulator's --speed
    # above 1 needs it raised).
    max_media_ahead_s: float = 3.0
    max_pending_sockets: int = 16  # media sockets open but not yet authenticated by their token, in all
    max_pending_per_source: int = 4  # ... and from one address
    # /metrics and /healthz on their own address (e.g. 127.0.0.1:9100), off the public port; unset: on server.port.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


@dataclass
class Settings:
    models: ModelSettings = field(default_factory=ModelSettings)
    dialog: DialogSettings = field(default_factory=DialogSettings)
    voice: VoiceSettings = field(default_factory=VoiceSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    server: ServerSettings = field(default_factory=ServerSettings)

    def display(self) -> dict[str, dict[str, object]]:
        """The settings as plain data with secrets masked, for `--print-config` and logs."""
        out: dict[str, dict[str, object]] = {}
        for section in dataclasses.fields(self):
            values = dataclasses.asdict(getattr(self, section.name))
            for key, value in values.items():
                if (section.name, key) in SECRET_FIELDS and value:
                    values[key] = "***" + str(value)[-2:] if len(str(value)) > 8 else "***"
                elif isinstance(value, Path):
                    values[key] = str(value)
            out[section.name] = values
        return out


ALIASES = {
    "VOICEBOT_MODELS_DIR": ("models", "dir"),
    "VOICEBOT_PUBLIC_URL": ("server", "public_url"),
    "TWILIO_ACCOUNT_SID": ("server", "twilio_account_sid"),
    "TWILIO_AUTH_TOKEN": ("server", "twilio_auth_token"),
}


def _coerce(value: object, annotation: object, where: str) -> object:
    """Turn a TOML or environment value into the field's declared type."""
    hint = annotation
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if optional and value in ("", None):
        return None
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(value)
        if hint is float:
            return float(value)
        if hint is Path:
            return Path(str(value)).expanduser()
        if hint is str:
            return str(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(hint, '__name__', hint)}: {exc}") from exc
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")


def _set(settings: Settings, section: str, key: str, value: object, where: str) -> None:
    target = getattr(settings, section, None)
    if target is None or not dataclasses.is_dataclass(target):
        raise ConfigError(f"{where}: unknown section [{section}]; known: {', '.join(_sections())}")
    hints = typing.get_type_hints(type(target))
    if key not in hints:
        raise ConfigError(f"{where}: unknown setting {section}.{key}; known: {', '.join(hints)}")
    setattr(target, key, _coerce(value, hints[key], where))


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings)]


def load_settings(path: Path | None = None, env: typing.Mapping[str, str] | None = None) -> Settings:
    """Build settings from defaults, then the TOML file (`path` or `VOICEBOT_CONFIG`), then the environment."""
    env = os.environ if env is None else env
    settings = Settings()
    path = path or (Path(env["VOICEBOT_CONFIG"]) if env.get("VOICEBOT_CONFIG") else None)
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
        for section, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: top-level key {section!r} must be a [section] table")
            for key, value in table.items():
                _set(settings, section, key, value, f"{path} [{section}] {key}")
    sections = _sections()
    for name, value in env.items():
        if name in ALIASES:
            section, key = ALIASES[name]
        elif name.startswith("VOICEBOT_") and name != "VOICEBOT_CONFIG":
            rest = name[len("VOICEBOT_") :].lower()
            section = next((s for s in sections if rest.startswith(s + "_")), None)
            if section is None:
                continue  # other tools' variables share the prefix rarely; don't refuse them
            key = rest[len(section) + 1 :]
        else:
            continue
        _set(settings, section, key, value, f"environment variable {name}")
    return settings
