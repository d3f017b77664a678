"""A local stand-in for Twilio's REST Calls endpoint, for the real twilio client to talk to in tests and the soak.

It answers `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` like Twilio: HTTP basic auth with
the account SID and auth token (401 otherwise), 404 for calls listed as `gone` (the caller already hung up),
and a JSON call resource otherwise. Every request is recorded with its form fields and arrival time.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

CALL_PATH = re.compile(r"^/2010-04-01/Accounts/(AC\w+)/Calls/(CA\w+)\.json$")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    account_sid: str
    call_sid: str
    form: dict[str, str]
    at: float  # time.time() on arrival


@dataclass
class FakeTwilio:
    account_sid: str
    auth_token: str
    gone: set[str] = field(default_factory=set)
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                expected = base64.b64encode(f"{fake.account_sid}:{fake.auth_token}".encode()).decode()
                match = CALL_PATH.match(self.path)
                if self.headers.get("Authorization") != f"Basic {expected}":
                    self._answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
                    return
                if match is None or match.group(1) != fake.account_sid:
                    self._answer(404, {"code": 20404, "message": f"no resource {self.path}", "status": 404})
                    return
                call_sid = match.group(2)
                fake.requests.append(RecordedRequest("POST", self.path, fake.account_sid, call_sid, form, time.time()))
                if call_sid in fake.gone:
                    self._answer(404, {"code": 20404, "message": f"Call {call_sid} was not found", "status": 404})
                    return
                status = form.get("Status", "in-progress")
                self._answer(200, {"sid": call_sid, "account_sid": fake.account_sid, "status": status})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeTwilio:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def for_call(self, call_sid: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.call_sid == call_sid]
