"""An SMTP server that keeps every message it receives, for a test Mailman site.

Run by the Mailman venv's python (it needs aiosmtpd)::

    python smtp_sink.py PORT OUTPUT [TEMPFAIL_FLAG]

It listens on 127.0.0.1:PORT and appends one JSON line per received message to
OUTPUT (flushed at once): ``mail_from``, ``rcpt_tos``, ``message_id`` (the
Message-ID header, stripped) and ``data`` (the raw message as text).  While the
file TEMPFAIL_FLAG exists, it answers DATA with a temporary failure (451) and
keeps nothing.  It stops on SIGTERM or SIGINT.
"""

import email.parser
import json
import os
import signal
import sys
from typing import Any

from aiosmtpd.controller import Controller


class Sink:
    """The aiosmtpd handler: one JSON line per message accepted."""

    def __init__(self, output: str, tempfail_flag: str | None) -> None:
        self._output = open(output, "a", encoding="utf-8")  # noqa: SIM115
        self._tempfail_flag = tempfail_flag

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self._tempfail_flag and os.path.exists(self._tempfail_flag):
            return "451 4.3.0 Temporary failure (test sink)"
        raw = envelope.original_content or envelope.content or b""
        headers = email.parser.BytesHeaderParser().parsebytes(raw)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "message_id": (headers.get("Message-ID") or "").strip(),
            "data": raw.decode("utf-8", errors="replace"),
        }
        self._output.write(json.dumps(record) + "\n")
        self._output.flush()
        return "250 OK"

    def close(self) -> None:
        self._output.close()


def main() -> None:
    port, output = int(sys.argv[1]), sys.argv[2]
    tempfail_flag = sys.argv[3] if len(sys.argv) > 3 else None
    # Blocked before the server's thread starts, so that only sigwait sees them.
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    sink = Sink(output, tempfail_flag)
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    print(f"smtp sink listening on 127.0.0.1:{port}", flush=True)
    try:
        signal.sigwait(signals)
    finally:
        controller.stop()
        sink.close()


if __name__ == "__main__":
    main()
