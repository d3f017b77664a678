"""voicebot: a phone support agent that runs on the company's own CPU."""

__version__ = "0.1.0"
